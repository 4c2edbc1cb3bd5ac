"""ISIC data layer: readers, validation errors (bad inputs), layouts, seeded splits, prepare-isic."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vmunet_monai.data import ISICDataError, list_inference_images, load_isic_datalist, make_isic_splits
from vmunet_monai.data.isic_io import check_pair, read_image_rgb, read_mask_binary
from vmunet_monai.data.isic_layout import find_isic_pairs, split_pairs
from vmunet_monai.data.isic_prepare import prepare_isic

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "bundle" / "sample_data" / "isic"
SHARED_ISIC = Path(__file__).resolve().parents[2] / "shared" / "data" / "isic2017"


def _rgb(path: Path, size=(40, 30), mode="RGB", seed=0) -> Path:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4}[mode]
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], channels), dtype=np.uint8), mode=mode).save(path)
    return path


def _mask(path: Path, size=(40, 30), value=255, dtype=np.uint8) -> Path:
    array = np.zeros((size[1], size[0]), dtype=dtype)
    array[5:20, 10:30] = value
    Image.fromarray(array).save(path)
    return path


def _official_layout(root: Path, n: int = 6) -> Path:
    images, masks = root / "ISIC-2017_Training_Data", root / "ISIC-2017_Training_Part1_GroundTruth"
    images.mkdir(parents=True)
    masks.mkdir(parents=True)
    for i in range(n):
        _rgb(images / f"ISIC_{i:07d}.jpg", seed=i)
        _mask(masks / f"ISIC_{i:07d}_segmentation.png")
    _rgb(images / "ISIC_0000000_superpixels.png")  # shipped by ISIC 2017, not a task image
    (images / "ATTRIBUTION.txt").write_text("x")
    return root


# ---------------------------------------------------------------- readers and bad inputs


def test_rgba_png_alpha_dropped_and_grey_replicated(tmp_path):
    rgba = _rgb(tmp_path / "a.png", mode="RGBA")
    expected = np.asarray(Image.open(rgba))[..., :3]
    np.testing.assert_array_equal(read_image_rgb(rgba), expected)
    grey = tmp_path / "g.png"
    Image.fromarray(np.full((8, 9), 77, np.uint8)).save(grey)
    out = read_image_rgb(grey)
    assert out.shape == (8, 9, 3) and (out == 77).all()


def test_corrupt_and_truncated_images_are_named(tmp_path):
    bad = tmp_path / "corrupt.jpg"
    bad.write_bytes(b"this is not a jpeg")
    with pytest.raises(ISICDataError, match="corrupt.jpg: cannot read image"):
        read_image_rgb(bad)
    good = _rgb(tmp_path / "full.jpg", size=(200, 200))
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ISICDataError, match="truncated.jpg"):
        read_image_rgb(truncated)


def test_missing_file_and_empty_folder(tmp_path):
    with pytest.raises(ISICDataError, match="nope.png: file not found"):
        read_mask_binary(tmp_path / "nope.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ISICDataError, match="empty: no image files"):
        list_inference_images(tmp_path / "empty")
    with pytest.raises(ISICDataError, match="folder not found"):
        list_inference_images(tmp_path / "missing")


def test_mask_size_mismatch_names_both_files(tmp_path):
    image = _rgb(tmp_path / "x.jpg", size=(40, 30))
    mask = _mask(tmp_path / "x_segmentation.png", size=(30, 40))
    with pytest.raises(ISICDataError, match=r"x_segmentation.png: mask size 30x40 does not match image .*x.jpg size 40x30"):
        check_pair(image, mask)


def test_16bit_masks_binary_accepted_multivalue_rejected(tmp_path):
    binary16 = _mask(tmp_path / "m16.png", value=65535, dtype=np.uint16)
    assert Image.open(binary16).mode.startswith("I")
    mask = read_mask_binary(binary16)
    assert mask.dtype == bool and mask.sum() == 15 * 20
    ramp = tmp_path / "ramp16.png"
    Image.fromarray(np.arange(30 * 40, dtype=np.uint16).reshape(30, 40) * 50).save(ramp)
    with pytest.raises(ISICDataError, match="ramp16.png: not a binary mask"):
        read_mask_binary(ramp)


def test_non_binary_and_16bit_images_rejected(tmp_path):
    soft = tmp_path / "soft.png"
    Image.fromarray(np.tile(np.arange(0, 250, 10, dtype=np.uint8), (5, 1))).save(soft)
    with pytest.raises(ISICDataError, match="soft.png: not a binary mask"):
        read_mask_binary(soft)
    no_zero = tmp_path / "nozero.png"
    Image.fromarray(np.array([[3, 255]], dtype=np.uint8)).save(no_zero)
    with pytest.raises(ISICDataError, match="do not include background 0"):
        read_mask_binary(no_zero)
    img16 = tmp_path / "img16.png"
    Image.fromarray(np.zeros((4, 4), np.uint16) + 1000).save(img16)
    with pytest.raises(ISICDataError, match="img16.png: .*16-bit"):
        read_image_rgb(img16)


# ---------------------------------------------------------------- layouts, splits, datalists


def test_split_is_seeded_disjoint_and_sized():
    pairs = [(Path(f"ISIC_{i}.jpg"), Path(f"ISIC_{i}_segmentation.png")) for i in range(100)]
    kept, held = split_pairs(pairs, 0.3, seed=42)
    assert (len(kept), len(held)) == (70, 30)
    assert not set(kept) & set(held)
    assert split_pairs(list(reversed(pairs)), 0.3, seed=42) == (kept, held)  # order independent
    assert split_pairs(pairs, 0.3, seed=7)[1] != held


def test_official_layout_pairs_and_reports(tmp_path):
    root = _official_layout(tmp_path / "src")
    (root / "ISIC-2017_Training_Data" / "ISIC_0000099.jpg").write_bytes(
        (root / "ISIC-2017_Training_Data" / "ISIC_0000001.jpg").read_bytes())  # image without mask
    found = find_isic_pairs(root)
    assert len(found.pairs["training"]) == 6
    assert any("ISIC_0000099.jpg: no mask" in p for p in found.problems)
    assert {p.name for p in found.ignored} == {"ISIC_0000000_superpixels.png", "ATTRIBUTION.txt"}
    with pytest.raises(ISICDataError, match="ISIC_0000099.jpg: no mask"):
        make_isic_splits(root)


def test_sample_datalist_matches_the_seeded_split():
    content = json.loads((SAMPLE / "datalist.json").read_text())
    assert content["recipe"] == "demo"
    splits, problems, _ = make_isic_splits(SAMPLE)  # the same seeded split from the raw images/ + masks/
    assert not problems
    for key in ("training", "validation", "test"):
        assert [Path(e["image"]).name for e in content[key]] == [i.name for i, _ in splits[key]]
    names = {key: {Path(e["image"]).name for e in content[key]} for key in ("training", "validation", "test")}
    assert not names["validation"] & names["test"]  # model selection never sees the test split
    assert not names["training"] & (names["validation"] | names["test"])
    entries = load_isic_datalist(SAMPLE, "validation")
    assert len(entries) == 4 and all(Path(e["image"]).is_file() and Path(e["label"]).is_file() for e in entries)


def test_datalist_loader_reports_bad_file(tmp_path):
    data = tmp_path / "data"
    shutil.copytree(SAMPLE, data)
    first = json.loads((data / "datalist.json").read_text())["training"][0]
    (data / first["label"]).write_bytes(b"garbage")
    with pytest.raises(ISICDataError, match=Path(first["label"]).name + ": cannot read image"):
        load_isic_datalist(data, "training")
    with pytest.raises(ISICDataError, match="no 'nonexistent' split"):
        load_isic_datalist(data, "nonexistent", validate=False)


def test_prepare_isic_published_layout_and_bad_files(tmp_path):
    root = _official_layout(tmp_path / "src", n=10)
    out = Path(prepare_isic(str(root), str(tmp_path / "out"), size=32, test_fraction=0.3, val_fraction=0.2))
    content = json.loads(out.read_text())
    assert [len(content[k]) for k in ("training", "validation", "test")] == [6, 1, 3]
    assert len(list((tmp_path / "out" / "train" / "images").glob("*.png"))) == 7
    assert len(list((tmp_path / "out" / "val" / "masks").glob("*.png"))) == 3
    mask = np.asarray(Image.open(tmp_path / "out" / content["test"][0]["label"]))
    assert mask.shape == (32, 32) and set(np.unique(mask)) <= {0, 255}
    assert Image.open(tmp_path / "out" / content["test"][0]["image"]).size == (32, 32)
    assert load_isic_datalist(tmp_path / "out", "test")  # the written datalist loads and validates
    # a wrong-size mask: named, stops by default; left out and reported with skip_bad
    _mask(root / "ISIC-2017_Training_Part1_GroundTruth" / "ISIC_0000003_segmentation.png", size=(20, 20))
    with pytest.raises(ISICDataError, match="ISIC_0000003_segmentation.png: mask size 20x20"):
        prepare_isic(str(root), str(tmp_path / "out2"), size=32)
    prepare_isic(str(root), str(tmp_path / "out3"), size=32, skip_bad=True)
    report = json.loads((tmp_path / "out3" / "prepare_report.json").read_text())
    assert sum(report["counts"].values()) == 9 and "ISIC_0000003_segmentation.png" in report["rejected"][0]


@pytest.mark.skipif(not SHARED_ISIC.is_dir(), reason="../shared/data/isic2017 not available")
def test_real_isic2017_layout_is_found():
    splits, problems, _ = make_isic_splits(SHARED_ISIC, test_fraction=0.0, val_fraction=0.15, seed=42)
    assert not problems
    assert (len(splits["training"]), len(splits["validation"]), len(splits["test"])) == (1700, 300, 0)
    image, mask = splits["validation"][0]
    assert mask.name == image.stem + "_segmentation.png"
    assert check_pair(image, mask) == (256, 256)


def test_isic2018_and_published_layouts(tmp_path):
    src = tmp_path / "isic2018"
    for split, (img_dir, mask_dir) in {
        "training": ("ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1_Training_GroundTruth"),
        "official_validation": ("ISIC2018_Task1-2_Validation_Input", "ISIC2018_Task1_Validation_GroundTruth"),
    }.items():
        (src / img_dir).mkdir(parents=True)
        (src / mask_dir).mkdir(parents=True)
        for i in range(4 if split == "training" else 2):
            _rgb(src / img_dir / f"ISIC_{split[:3]}{i}.jpg", seed=i)
            _mask(src / mask_dir / f"ISIC_{split[:3]}{i}_segmentation.png")
    splits, problems, _ = make_isic_splits(src, test_fraction=0.25, val_fraction=0.0)
    assert not problems
    assert (len(splits["training"]), len(splits["test"]), len(splits["official_validation"])) == (3, 1, 2)
    out = tmp_path / "prepared"
    prepare_isic(str(src), str(out), size=0)  # size 0 keeps the original 40x30
    assert Image.open(next((out / "official_val" / "images").glob("*.png"))).size == (40, 30)
    # the prepared (published) layout is itself a valid source: train/ -> training+validation, val/ -> test
    found = find_isic_pairs(out)
    assert found.layout == "published" and len(found.pairs["test"]) == 1 and len(found.pairs["training"]) == 3

"""Synapse readers, BTCV preparation, stacking and bad-input errors (synthetic data + the real case0031 slices)."""

from __future__ import annotations

import h5py
import nibabel as nib
import numpy as np
import pytest
from monai.transforms import LoadImaged

from tests.conftest import shared_path
from vmunet_monai.data.synapse import (
    SYNAPSE_TEST_CASES,
    SYNAPSE_TRAIN_CASES,
    SimpleITKReader,
    SynapseDataError,
    SynapseH5Reader,
    SynapseNpzReader,
    read_synapse_h5,
    read_synapse_npz,
    synapse_test_datalist,
    synapse_train_datalist,
)
from vmunet_monai.data.synapse_prepare import (
    BTCV_TO_SYNAPSE,
    map_btcv_labels,
    prepare_synapse,
    reorient_to_lps,
    stack_case,
    window_ct,
    write_h5_volume,
)


def _npz(path, image=None, label=None, **extra):
    arrays = {}
    if image is not None:
        arrays["image"] = image
    if label is not None:
        arrays["label"] = label
    np.savez(path, **arrays, **extra)
    return path


# ---------------------------------------------------------------- label table, window, orientation


def test_btcv_label_table_on_synthetic_volume():
    # one voxel per BTCV label 0..13 placed in a small volume, plus a block of liver
    vol = np.zeros((4, 4, 3), dtype=np.int16)
    vol.ravel()[:14] = np.arange(14)
    vol[2:, 2:, 2] = 6
    mapped = map_btcv_labels(vol)
    expected = {0: 0, 1: 7, 2: 4, 3: 3, 4: 2, 5: 0, 6: 5, 7: 8, 8: 1, 9: 0, 10: 0, 11: 6, 12: 0, 13: 0}
    assert mapped.ravel()[:14].tolist() == [expected[i] for i in range(14)]
    assert np.all(mapped[2:, 2:, 2] == 5)  # liver
    assert mapped.shape == vol.shape and mapped.dtype == np.uint8
    # the table is a bijection of the 8 organs onto 1..8, and the published organ order
    assert sorted(BTCV_TO_SYNAPSE.values()) == list(range(1, 9))
    assert BTCV_TO_SYNAPSE[8] == 1 and BTCV_TO_SYNAPSE[7] == 8  # aorta first, stomach last


def test_btcv_labels_out_of_range_name_the_file():
    with pytest.raises(SynapseDataError, match="label0001.nii.gz.*0..13"):
        map_btcv_labels(np.array([0, 14]), "label0001.nii.gz")


def test_window_clips_and_scales():
    hu = np.array([-2000, -125, -25, 75, 175, 275, 276, 3071], dtype=np.int16)
    out = window_ct(hu)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0, 0, 0.25, 0.5, 0.75, 1, 1, 1], atol=1e-7)
    with pytest.raises(ValueError):
        window_ct(hu, (10, 10))


def test_reorient_to_lps_from_ras():
    # RAS array: axis 0 increases towards patient Right; LPS wants axis 0 towards Left -> flipped
    arr = np.zeros((4, 3, 2))
    arr[3, 0, 0] = 1  # the most-right, most-posterior, inferior voxel
    affine = np.diag([0.7, 0.8, 3.0, 1.0])  # nibabel world is RAS+, axes aligned
    out, spacing = reorient_to_lps(arr, affine)
    assert out.shape == (4, 3, 2) and spacing == pytest.approx((0.7, 0.8, 3.0))
    # rightmost -> row 0 (patient right at the top, as TransUNet slices); posterior -> last column
    assert out[0, 2, 0] == 1
    # a transposed input (axes S, R, A) comes back as L, P, S with the spacing permuted accordingly
    t_affine = np.array([[0, 0.7, 0, 0], [0, 0, 0.8, 0], [3.0, 0, 0, 0], [0, 0, 0, 1]])
    out2, spacing2 = reorient_to_lps(np.transpose(arr, (2, 0, 1)), t_affine)
    assert spacing2 == pytest.approx((0.7, 0.8, 3.0))
    np.testing.assert_array_equal(out2, out)


# ---------------------------------------------------------------- npz / h5 readers and bad input


def test_npz_reader_roundtrip_and_loadimaged(tmp_path):
    img = np.random.default_rng(0).random((16, 12)).astype(np.float32)
    lab = np.zeros((16, 12), np.float32)
    lab[3:6, 4:8] = 5
    f = _npz(tmp_path / "case0001_slice000.npz", img, lab)
    arrays = read_synapse_npz(f)
    np.testing.assert_array_equal(arrays["image"], img)
    load = [LoadImaged("image", reader=SynapseNpzReader("image")), LoadImaged("label", reader=SynapseNpzReader("label"))]
    d = {"image": str(f), "label": str(f)}
    for t in load:
        d = t(d)
    assert tuple(d["image"].shape) == (16, 12) and tuple(d["label"].shape) == (16, 12)
    np.testing.assert_array_equal(d["label"].numpy(), lab)


@pytest.mark.parametrize(
    "image, label, message",
    [
        (np.zeros((8, 8), np.float32), None, r"missing key\(s\) \['label'\]"),
        (np.zeros((8, 8, 2), np.float32), np.zeros((8, 8, 2), np.float32), r"'image' has shape \(8, 8, 2\)"),
        (np.zeros((8, 8), np.float32), np.zeros((8, 9), np.float32), r"shape mismatch: image \(8, 8\) vs label \(8, 9\)"),
        (np.array([["a"] * 8] * 8), np.zeros((8, 8), np.float32), r"'image' has dtype <U1"),
        (np.full((8, 8), np.nan, np.float32), np.zeros((8, 8), np.float32), "NaN"),
        (np.zeros((8, 8), np.float32), np.full((8, 8), 9, np.float32), r"values span \[9, 9\]"),
        (np.zeros((8, 8), np.float32), np.full((8, 8), 0.5, np.float32), "non-integer"),
    ],
)
def test_npz_bad_input_names_the_file(tmp_path, image, label, message):
    f = _npz(tmp_path / "case0007_slice003.npz", image, label)
    with pytest.raises(SynapseDataError, match=message) as info:
        read_synapse_npz(f)
    assert "case0007_slice003.npz" in str(info.value)


def test_npz_corrupt_file(tmp_path):
    f = tmp_path / "case0001_slice000.npz"
    f.write_bytes(b"not a zip archive")
    with pytest.raises(SynapseDataError, match="case0001_slice000.npz: cannot read"):
        read_synapse_npz(f)


def test_h5_reader_layout_spacing_and_affine(tmp_path):
    image = np.random.default_rng(1).random((5, 16, 12)).astype(np.float32)
    label = np.zeros((5, 16, 12), np.float32)
    label[2, 4:8, 3:6] = 7
    f = write_h5_volume(tmp_path / "case0002.npy.h5", image, label, spacing=(0.75, 0.8, 2.5))
    arrays, spacing = read_synapse_h5(f)
    assert spacing == (0.75, 0.8, 2.5)
    d = LoadImaged("label", reader=SynapseH5Reader("label"), ensure_channel_first=True)({"label": str(f)})
    assert tuple(d["label"].shape) == (1, 16, 12, 5)  # slices last
    np.testing.assert_array_equal(d["label"][0, :, :, 2].numpy(), label[2])
    np.testing.assert_allclose(np.diag(d["label"].affine.numpy()), [-0.75, -0.8, 2.5, 1])
    assert bool(d["label"].meta["spacing_known"])
    # TransUNet files carry no spacing
    with h5py.File(tmp_path / "case0003.npy.h5", "w") as h:
        h["image"], h["label"] = image, label
    assert read_synapse_h5(tmp_path / "case0003.npy.h5")[1] is None


def test_h5_bad_input_names_the_file(tmp_path):
    ok = np.zeros((3, 8, 8), np.float32)
    with h5py.File(tmp_path / "case0004.npy.h5", "w") as h:
        h["image"] = ok
    with pytest.raises(SynapseDataError, match=r"case0004.npy.h5: missing h5 dataset\(s\) \['label'\]"):
        read_synapse_h5(tmp_path / "case0004.npy.h5")
    with h5py.File(tmp_path / "case0008.npy.h5", "w") as h:
        h["image"], h["label"] = ok, np.zeros((3, 8, 7), np.float32)
    with pytest.raises(SynapseDataError, match=r"case0008.npy.h5: image/label shape mismatch"):
        read_synapse_h5(tmp_path / "case0008.npy.h5")
    with h5py.File(tmp_path / "case0022.npy.h5", "w") as h:
        h["image"], h["label"] = np.zeros((8, 8), np.float32), np.zeros((8, 8), np.float32)
    with pytest.raises(SynapseDataError, match=r"case0022.npy.h5: 'image' has shape \(8, 8\); expected 3D"):
        read_synapse_h5(tmp_path / "case0022.npy.h5")
    (tmp_path / "case0025.npy.h5").write_text("garbage")
    with pytest.raises(SynapseDataError, match="case0025.npy.h5: cannot read as an HDF5"):
        read_synapse_h5(tmp_path / "case0025.npy.h5")


def test_datalists_and_list_files(tmp_path):
    (tmp_path / "train_npz").mkdir()
    for k in range(3):
        _npz(tmp_path / "train_npz" / f"case0005_slice{k:03d}.npz", np.zeros((4, 4), np.float32), np.zeros((4, 4), np.float32))
    items = synapse_train_datalist(tmp_path)  # no list file: glob
    assert [i["image"].endswith(f"case0005_slice{k:03d}.npz") for k, i in enumerate(items)] == [True] * 3
    lists = tmp_path / "lists" / "lists_Synapse"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("case0005_slice001\ncase0005_slice002\n\n")
    assert len(synapse_train_datalist(tmp_path)) == 2
    (lists / "train.txt").write_text("case0005_slice001\ncase0006_slice000\n")
    with pytest.raises(SynapseDataError, match="case0006_slice000.npz"):
        synapse_train_datalist(tmp_path)
    assert synapse_test_datalist(tmp_path, required=False) == []
    with pytest.raises(SynapseDataError, match="test_vol.txt"):
        synapse_test_datalist(tmp_path)


# ---------------------------------------------------------------- preparation from raw BTCV


def _fake_btcv(root, cases, shape=(10, 8, 4)):
    rng = np.random.default_rng(2)
    for n in cases:
        (root / "img").mkdir(parents=True, exist_ok=True)
        (root / "label").mkdir(parents=True, exist_ok=True)
        hu = rng.integers(-1000, 1000, size=shape).astype(np.int16)
        lab = np.zeros(shape, np.uint8)
        lab[0, 0, :] = 6  # liver at the patient's right-posterior edge (RAS: axis 0 towards Right -> index 0 = left!)
        lab[-1, 0, :] = 1  # spleen at the other end
        affine = np.diag([-0.7, -0.7, 2.5, 1.0])  # BTCV-like: array axes towards L and P (LPS order in RAS world)
        nib.save(nib.Nifti1Image(hu, affine), root / "img" / f"img{n:04d}.nii.gz")
        nib.save(nib.Nifti1Image(lab, affine), root / "label" / f"label{n:04d}.nii.gz")
    return root


def test_prepare_synapse_from_fake_btcv(tmp_path):
    raw = _fake_btcv(tmp_path / "RawData" / "Training", [5, 6, 1])
    out = tmp_path / "Synapse"
    ids = prepare_synapse(str(tmp_path / "RawData"), str(out), train_cases=["case0005", 6], test_cases=[1])
    assert ids["test"] == ["case0001"] and len(ids["train"]) == 8  # 2 cases x 4 slices
    assert (out / "lists/lists_Synapse/train.txt").read_text().split() == ids["train"]
    assert (out / "lists/lists_Synapse/test_vol.txt").read_text().split() == ["case0001"]
    s = read_synapse_npz(out / "train_npz/case0005_slice002.npz")
    hu = np.asarray(nib.load(raw / "img/img0005.nii.gz").dataobj)[:, :, 2]
    # this affine is already LPS-ordered: the slice is the raw slice, windowed
    np.testing.assert_allclose(s["image"], np.clip((hu + 125.0) / 400.0, 0, 1), atol=1e-6)
    assert s["label"][0, 0] == 5 and s["label"][-1, 0] == 7  # liver -> 5, spleen -> 7
    arrays, spacing = read_synapse_h5(out / "test_vol_h5/case0001.npy.h5")
    assert arrays["image"].shape == (4, 10, 8) and spacing == pytest.approx((0.7, 0.7, 2.5))
    with pytest.raises(SynapseDataError, match="img0009.nii.gz"):
        prepare_synapse(str(raw), str(out), train_cases=[9], test_cases=[])


def test_standard_split():
    assert len(SYNAPSE_TRAIN_CASES) == 18 and len(SYNAPSE_TEST_CASES) == 12
    assert not set(SYNAPSE_TRAIN_CASES) & set(SYNAPSE_TEST_CASES)
    assert SYNAPSE_TEST_CASES[:3] == ("case0008", "case0022", "case0038")


def test_stack_case_synthetic_and_gaps(tmp_path):
    npz = tmp_path / "train_npz"
    npz.mkdir()
    for k in (0, 1, 2):
        _npz(npz / f"case0009_slice{k:03d}.npz", np.full((4, 5), k / 10, np.float32), np.full((4, 5), k, np.float32))
    path = stack_case(str(npz), "case0009", list_file=str(tmp_path / "lists/lists_Synapse/test_vol.txt"))
    arrays, _ = read_synapse_h5(path)
    assert arrays["label"][:, 0, 0].tolist() == [0, 1, 2]
    assert (tmp_path / "lists/lists_Synapse/test_vol.txt").read_text().split() == ["case0009"]
    (npz / "case0009_slice001.npz").unlink()
    with pytest.raises(SynapseDataError, match=r"missing slice\(s\) \[1\]"):
        stack_case(str(npz), "case0009")
    with pytest.raises(SynapseDataError, match="no case0010_slice"):
        stack_case(str(npz), "case0010")


# ---------------------------------------------------------------- real data (skips without ../shared)


def test_real_case0031_slices_and_stack(tmp_path):
    npz_dir = shared_path("synapse", "train_npz")
    files = sorted(npz_dir.glob("case0031_slice*.npz"))
    assert len(files) == 93
    s = read_synapse_npz(files[50])
    assert s["image"].shape == (512, 512) and 0 <= s["image"].min() and s["image"].max() <= 1
    path = stack_case(str(npz_dir), "case0031", output=str(tmp_path))
    arrays, spacing = read_synapse_h5(path)
    assert arrays["image"].shape == (93, 512, 512) and spacing is None
    for k in (0, 46, 92):
        ref = read_synapse_npz(files[k])
        np.testing.assert_array_equal(arrays["image"][k], ref["image"])
        np.testing.assert_array_equal(arrays["label"][k], ref["label"])


def test_real_slices_follow_lps_convention():
    """The TransUNet slices put patient right at row 0 and anterior at column 0 (our 'LPS' convention)."""
    s = read_synapse_npz(shared_path("synapse", "train_npz", "case0031_slice055.npz"))["label"]
    rows = {c: np.nonzero(s == c)[0].mean() for c in (5, 7)}
    cols = {c: np.nonzero(s == c)[1].mean() for c in (8, 3)}
    assert rows[5] < rows[7]  # liver (patient right) above spleen (patient left)
    assert cols[8] < cols[3]  # stomach (anterior) left of the left kidney (posterior)


def test_real_dicom_series_and_nifti_readers():
    folder = shared_path("ct_samples", "totalsegmentator", "example_ct_dicom")
    reader = SimpleITKReader()
    assert reader.verify_suffix(str(folder))
    arr, meta = reader.get_data(reader.read(str(folder)))
    assert arr.shape == (512, 512, 20)
    # ITK LPS origin (-249.5, -437.5, -804.5) becomes the RAS affine with x/y negated
    np.testing.assert_allclose(meta["affine"][:3, 3], [249.51171875, 437.51171875, -804.5])
    np.testing.assert_allclose(np.diag(meta["affine"])[:3], [-0.9765625, -0.9765625, 2.0])
    nifti = shared_path("ct_samples", "totalsegmentator", "example_ct_sm.nii.gz")
    arr2, meta2 = reader.get_data(reader.read(str(nifti)))
    np.testing.assert_allclose(meta2["affine"], nib.load(nifti).affine, atol=1e-4)
    np.testing.assert_array_equal(arr2, np.asarray(nib.load(nifti).dataobj))


def test_simpleitk_reader_bad_input(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SynapseDataError, match="empty: folder holds no DICOM series"):
        SimpleITKReader().read(str(tmp_path / "empty"))
    (tmp_path / "broken.nii.gz").write_bytes(b"\x1f\x8b broken")
    with pytest.raises(SynapseDataError, match="broken.nii.gz: SimpleITK cannot read it"):
        SimpleITKReader().read(str(tmp_path / "broken.nii.gz"))


def test_spacing_file_from_raw_btcv_feeds_the_h5_reader(tmp_path):
    from vmunet_monai.data.synapse_prepare import write_spacing_file

    raw = _fake_btcv(tmp_path / "Training", [1, 2])
    table = write_spacing_file(str(raw), str(tmp_path / "spacing.json"))
    assert table == {"case0001": [0.7, 0.7, 2.5], "case0002": [0.7, 0.7, 2.5]}
    with h5py.File(tmp_path / "case0002.npy.h5", "w") as h:  # TransUNet style: no spacing attribute
        h["image"], h["label"] = np.zeros((3, 4, 4), np.float32), np.zeros((3, 4, 4), np.float32)
    d = LoadImaged("label", reader=SynapseH5Reader("label", spacing_file=tmp_path / "spacing.json"))(
        {"label": str(tmp_path / "case0002.npy.h5")}
    )
    np.testing.assert_allclose(np.diag(d["label"].affine.numpy()), [-0.7, -0.7, 2.5, 1])
    assert bool(d["label"].meta["spacing_known"])
    (tmp_path / "bad.json").write_text('{"case0002": [1, 2]}')
    with pytest.raises(SynapseDataError, match="bad.json: case"):
        SynapseH5Reader("label", spacing_file=tmp_path / "bad.json")

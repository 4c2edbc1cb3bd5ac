"""Synapse 3D workflows end to end: slice inferer, bundle train -> evaluate on real case0031, CT inference
(embedded sample without ../shared; NIfTI and DICOM from ../shared), metadata schema."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd

from tests.conftest import REPO, shared_path
from vmunet_monai.data.synapse import SimpleITKReader, ct_image_readers, read_synapse_h5
from vmunet_monai.data.synapse_prepare import stack_case
from vmunet_monai.workflows.synapse import SynapseSliceInferer, case_name, ct_datalist

CONFIGS = REPO / "bundle" / "configs"
TINY = {
    "network_def#dims": [8, 16, 32, 64],
    "network_def#depths": [1, 1, 1, 1],
    "network_def#depths_decoder": [1, 1, 1, 1],
    "network_def#d_state": 4,
}


class _IntensityToClass(torch.nn.Module):
    """A fake 9-class network: logits one-hot at class round(8 * x), recording the slice size it sees."""

    def __init__(self):
        super().__init__()
        self.seen = set()

    def forward(self, x):
        self.seen.add(tuple(x.shape[-2:]))
        cls = (x[:, 0] * 8).round().clamp(0, 8).long()
        return torch.nn.functional.one_hot(cls, 9).permute(0, 3, 1, 2).float()


def test_slice_inferer_per_slice_resize_and_nearest_restore():
    vol = torch.zeros(1, 1, 40, 48, 5)
    for k in range(5):
        vol[..., k] = k / 8  # slice k -> class k
    vol[0, 0, :, 30:, 4] = 6 / 8  # a sharp edge inside the last slice
    net = _IntensityToClass()
    out = SynapseSliceInferer(slice_size=32, sw_batch_size=2)(vol, net)
    assert tuple(out.shape) == (1, 1, 40, 48, 5)
    assert net.seen == {(32, 32)}  # every slice was resized to the training size
    for k in range(4):
        assert torch.all(out[0, 0, :, :, k] == k)
    assert set(torch.unique(out[0, 0, :, :, 4]).tolist()) == {4.0, 6.0}  # nearest: no blended labels
    assert torch.all(out[0, 0, :, :26, 4] == 4) and torch.all(out[0, 0, :, 33:, 4] == 6)
    logits = SynapseSliceInferer(slice_size=32, output="logits")(vol, net)
    assert tuple(logits.shape) == (1, 9, 40, 48, 5)
    with pytest.raises(ValueError, match="expected"):
        SynapseSliceInferer(32)(torch.zeros(1, 1, 4, 4, 4, 4), net)


def test_case_name():
    assert case_name("/data/test_vol_h5/case0001.npy.h5") == "case0001"
    assert case_name({"filename_or_obj": "/x/example_ct_dicom/"}) == "example_ct_dicom"


def _workflow(config_files, tmp_path, workflow_type, **overrides):
    wf = ConfigWorkflow(
        config_file=[str(CONFIGS / f) for f in config_files],
        meta_file=str(CONFIGS / "synapse_metadata.json"),
        workflow_type=workflow_type,
        **overrides,
    )
    wf.initialize()
    return wf


@pytest.fixture(scope="module")
def case0031_dataset(tmp_path_factory):
    """A Synapse folder from the real case0031: 12 training slices (all 8 organs) and their stacked h5 volume."""
    src = shared_path("synapse", "train_npz")
    root = tmp_path_factory.mktemp("synapse")
    (root / "train_npz").mkdir()
    lists = root / "lists" / "lists_Synapse"
    lists.mkdir(parents=True)
    ids = [f"case0031_slice{k:03d}" for k in range(44, 56)]
    for i in ids:
        shutil.copy(src / f"{i}.npz", root / "train_npz")
    (lists / "train.txt").write_text("".join(f"{i}\n" for i in ids))
    stack_case(str(root / "train_npz"), "case0031", list_file=str(lists / "test_vol.txt"))
    return root


def test_bundle_train_then_evaluate_on_case0031(case0031_dataset, tmp_path):
    bundle_root = tmp_path / "bundle"
    common = dict(bundle_root=str(bundle_root), dataset_dir=str(case0031_dataset), image_size=64, num_workers=0)
    train = _workflow(["synapse_train.json"], tmp_path, "train", epochs=1, val_interval=1, batch_size=4, **common, **TINY)
    assert train.check_properties() == []
    train.run()
    train.finalize()
    model = bundle_root / "models" / "synapse_model.pt"
    state = torch.load(model, weights_only=True)
    assert "final_conv.weight" in state and state["final_conv.weight"].shape[0] == 9
    info = json.loads((bundle_root / "models" / "synapse_model_info.json").read_text())
    assert info["image_size"] == 64 and info["network"]["dims"] == [8, 16, 32, 64]
    assert (bundle_root / "eval" / "synapse" / "validation" / "synapse_summary.md").is_file()

    # evaluation rebuilds the tiny network from synapse_model_info.json: no network overrides here;
    # a spacing file (as written from raw BTCV headers) gives HD95 in mm as well
    spacing_file = tmp_path / "spacing.json"
    spacing_file.write_text('{"case0031": [0.8, 0.8, 3.0]}')
    evaluate = _workflow(
        ["synapse_train.json", "synapse_evaluate.json"], tmp_path, "eval", spacing_file=str(spacing_file),
        save_volumes=True, empty_rule="published", hd95_pooling="pooled", **{k: v for k, v in common.items() if k != "image_size"},
    )
    evaluate.run()
    evaluate.finalize()
    out = bundle_root / "eval" / "synapse" / "evaluation"
    with open(out / "synapse_per_case.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["organ"] for r in rows][:2] == ["aorta", "gallbladder"] and len(rows) == 8
    assert all(r["case"] == "case0031" and r["empty_rule"] == "published" and r["hd95_pooling"] == "pooled" for r in rows)
    assert all(0.0 <= float(r["dice"]) <= 1.0 for r in rows)
    assert all(r["spacing_known"] == "True" and r["spacing_mm"] == "0.8 0.8 3" for r in rows)
    for r in rows:  # published rule: every value is defined; mm lies between 0.8x and 3x the voxel value
        assert not np.isnan(float(r["hd95_mm"])) and not np.isnan(float(r["hd95_vox"]))
        if r["status"] == "both":
            assert 0.8 * float(r["hd95_vox"]) - 1e-3 <= float(r["hd95_mm"]) <= 3.0 * float(r["hd95_vox"]) + 1e-3
    with open(bundle_root / "eval" / "synapse" / "validation" / "synapse_per_case.csv") as f:
        assert all(r["spacing_known"] == "False" for r in csv.DictReader(f))  # TransUNet-style h5: voxels only
    summary = (out / "synapse_summary.md").read_text()
    assert "| Model | DSC | HD95 (vox) |" in summary and "Aorta" in summary and "empty-mask rule: published" in summary and "pooled (medpy)" in summary
    pred = nib.load(out / "volumes" / "case0031_pred.nii.gz")
    label = read_synapse_h5(case0031_dataset / "test_vol_h5" / "case0031.npy.h5")[0]["label"]
    assert pred.shape == (512, 512, 12) and pred.get_data_dtype() == np.uint8
    assert set(np.unique(np.asarray(pred.dataobj))) <= set(range(9))
    assert label.shape == (12, 512, 512)


def _infer(tmp_path, dataset_dir=None, **overrides):
    out = tmp_path / "out"
    extra = {"dataset_dir": str(dataset_dir)} if dataset_dir is not None else {}
    wf = _workflow(
        ["synapse_inference.json"], tmp_path, "infer",
        bundle_root=str(REPO / "bundle"), ckpt_dir=str(tmp_path / "no_model"), output_dir=str(out),
        image_size=64, **extra, **TINY, **overrides,
    )
    assert wf.check_properties() == []
    wf.run()
    wf.finalize()
    return out


def test_default_inference_on_embedded_sample(tmp_path):
    """Runs without ../shared: the bundle ships a small Apache-2.0 CT (TotalSegmentator example)."""
    sample = REPO / "bundle" / "sample_data" / "ct" / "example_ct_sm.nii.gz"
    assert sample.is_file() and "Apache License" in (sample.parent / "LICENSE").read_text()
    out = _infer(tmp_path)
    seg = nib.load(out / "example_ct_sm_seg.nii.gz")
    src = nib.load(sample)
    assert seg.shape == src.shape and seg.get_data_dtype() == np.uint8
    np.testing.assert_allclose(seg.affine, src.affine, atol=1e-5)
    assert set(np.unique(np.asarray(seg.dataobj))) <= set(range(9))


def test_inference_nifti_and_dicom_from_shared(tmp_path):
    ts = shared_path("ct_samples", "totalsegmentator")
    dicom = ts / "example_ct_dicom"
    out = _infer(tmp_path, dataset_dir=ts)  # a folder holding a NIfTI file and a DICOM series folder
    assert sorted(p.name for p in out.iterdir()) == [
        "example_ct_dicom_seg.nii.gz", "example_ct_sm_seg.nii.gz", "example_seg_dicom_seg.nii.gz", "example_seg_seg.nii.gz"]
    nifti_seg = nib.load(out / "example_ct_sm_seg.nii.gz")
    np.testing.assert_allclose(nifti_seg.affine, nib.load(ts / "example_ct_sm.nii.gz").affine, atol=1e-5)
    dicom_seg = nib.load(out / "example_ct_dicom_seg.nii.gz")
    reader = SimpleITKReader()
    _, meta = reader.get_data(reader.read(str(dicom)))
    assert dicom_seg.shape == (512, 512, 20)
    np.testing.assert_allclose(dicom_seg.affine, meta["affine"], atol=1e-4)  # the input's affine (RAS)
    np.testing.assert_allclose(dicom_seg.header.get_zooms(), (0.9765625, 0.9765625, 2.0), atol=1e-6)
    # same world geometry as TotalSegmentator's own NIfTI conversion of this series
    reference = nib.load(ts / "example_seg_dicom.nii.gz")
    np.testing.assert_allclose(nib.as_closest_canonical(dicom_seg).affine, nib.as_closest_canonical(reference).affine, atol=1e-4)


def test_ct_orientation_matches_transunet_slices():
    """Through the inference preprocessing, a user's CT is sliced like TransUNet's slices (liver at top rows)."""
    seg = shared_path("ct_samples", "totalsegmentator", "example_seg.nii.gz")  # 1 spleen, 3 kidney L, 5 liver, 6 stomach
    load = Compose([
        LoadImaged("image", reader=ct_image_readers(), image_only=True),
        EnsureChannelFirstd("image"),
        Orientationd("image", axcodes="LPS", labels=None),
    ])
    vol = np.asarray(load({"image": str(seg)})["image"])[0]
    rows = {c: np.nonzero(vol == c)[0].mean() for c in (5, 1)}
    cols = {c: np.nonzero(vol == c)[1].mean() for c in (6, 3)}
    assert rows[5] < rows[1]  # liver (patient right) towards row 0, spleen towards the last row
    assert cols[6] < cols[3]  # stomach (anterior) towards column 0, left kidney (posterior) further


def test_ct_datalist_errors(tmp_path):
    with pytest.raises(ValueError, match="no NIfTI"):
        ct_datalist(tmp_path)
    with pytest.raises(ValueError, match="no such file"):
        ct_datalist(tmp_path / "missing.nii.gz")


def test_synapse_metadata_schema_and_channels():
    meta = json.loads((CONFIGS / "synapse_metadata.json").read_text())
    channels = meta["network_data_format"]["outputs"]["pred"]["channel_def"]
    assert list(channels.values()) == [
        "background", "aorta", "gallbladder", "kidney_left", "kidney_right", "liver", "pancreas", "spleen", "stomach"]
    assert len(meta["network_data_format"]["inputs"]["image"]["spatial_shape"]) == 3  # 3D for MONAI Label
    schema = CONFIGS / "schema" / "meta_schema_20240725.json"
    if not schema.is_file():
        pytest.skip(f"{schema} not present")
    from monai.bundle import verify_metadata

    verify_metadata(meta_file=str(CONFIGS / "synapse_metadata.json"), filepath=str(schema))


def test_cli_commands_exist():
    import importlib

    from vmunet_monai.cli import COMMANDS

    for name in ("prepare_synapse", "stack_synapse"):
        module, func = COMMANDS[name].split(":")
        assert callable(getattr(importlib.import_module(module), func))


def test_inference_optional_inplane_resampling(tmp_path):
    """target_spacing resamples slices in-plane before inference; Invertd brings the labels back to the input grid."""
    wf = _workflow(
        ["synapse_inference.json"], tmp_path, "infer", bundle_root=str(REPO / "bundle"), ckpt_dir=str(tmp_path / "none"),
        output_dir=str(tmp_path / "out"), image_size=64, target_spacing=[1.5, 1.5], **TINY,
    )
    assert tuple(wf.dataset[0]["image"].shape) == (1, 243, 201, 30)  # 3 mm -> 1.5 mm: (n - 1) * 2 + 1; slices kept
    wf.run()
    seg = nib.load(tmp_path / "out" / "example_ct_sm_seg.nii.gz")
    src = nib.load(REPO / "bundle" / "sample_data" / "ct" / "example_ct_sm.nii.gz")
    assert seg.shape == src.shape
    np.testing.assert_allclose(seg.affine, src.affine, atol=1e-5)

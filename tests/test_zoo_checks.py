"""Model-zoo CI checks, offline, for both bundle flavours (ISIC 2D and Synapse CT).

Mirrors ``model-zoo/ci/verify_bundle.py`` and its unit-test runner (notes section 7):

- ``verify_metadata`` against the shipped schema (``bundle/configs/schema/meta_schema_20240725.json``; no download),
  plus the zoo's extra rules: ``version`` is a ``changelog`` key, a display ``name``, exact published versions (what
  ``ci/get_bundle_requirements.py`` turns into ``pkg==version``), the necessary files (``LICENSE``).
- ``verify_net_in_out`` on the inference configs (the paper-size network, CPU).
- ``ConfigWorkflow(...).check_properties()`` for train, train + evaluate and infer, on fake data written here (as the
  zoo's unit tests do) and a tiny checkpoint where the config requires one.
- The Synapse bundle as MONAI Label sees it (``vmunet_monai.monailabel_app.assemble_bundle``: standard file names).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundle"
CONFIGS = BUNDLE / "configs"
SCHEMA = CONFIGS / "schema" / "meta_schema_20240725.json"
FILES = {
    "isic": {"meta": "metadata.json", "train": "train.json", "evaluate": "evaluate.json", "infer": "inference.json"},
    "synapse": {
        "meta": "synapse_metadata.json",
        "train": "synapse_train.json",
        "evaluate": "synapse_evaluate.json",
        "infer": "synapse_inference.json",
    },
}
TINY = {"dims": [8, 16, 32, 64], "depths": [1, 1, 1, 1], "depths_decoder": [1, 1, 1, 1], "d_state": 4}
VERSION = re.compile(r"^\d+(\.\d+)*$")


def _config(flavour: str, kind: str) -> Path:
    path = CONFIGS / FILES[flavour][kind]
    if not path.is_file():
        pytest.skip(f"{path.relative_to(REPO)} does not exist yet")
    return path


@pytest.mark.parametrize("flavour", ["isic", "synapse"])
def test_verify_metadata_offline_and_zoo_rules(flavour):
    from monai.bundle import verify_metadata

    meta_file = _config(flavour, "meta")
    assert SCHEMA.is_file(), "the metadata schema must ship with the bundle (no download in CI)"
    verify_metadata(meta_file=str(meta_file), filepath=str(SCHEMA))  # raises ValueError on a schema violation
    meta = json.loads(meta_file.read_text())
    assert meta["schema"].endswith("meta_schema_20240725.json")
    assert meta["version"] in meta["changelog"], "zoo CI: version must be a key of changelog"
    assert meta.get("name"), "zoo CONTRIBUTING: a display name"
    pinned = {"monai": meta["monai_version"], "torch": meta["pytorch_version"], "numpy": meta["numpy_version"]}
    pinned.update(meta["required_packages_version"])
    bad = {k: v for k, v in pinned.items() if not VERSION.match(str(v))}
    assert not bad, f"zoo CI installs name==version: these are not published versions: {bad}"
    # MONAI Label and MetaProperties read the first input/output by these names
    fmt = meta["network_data_format"]
    assert list(fmt["inputs"]) == ["image"] and list(fmt["outputs"]) == ["pred"]
    labels = {v.lower(): int(k) for k, v in fmt["outputs"]["pred"]["channel_def"].items() if v.lower() != "background"}
    assert labels and 0 not in labels.values(), f"MONAI Label label map {labels}: background must be 0"
    assert (BUNDLE / "LICENSE").is_file(), "zoo CI: LICENSE is a necessary file"
    assert (BUNDLE / "docs" / "README.md").is_file()


def test_verify_metadata_rejects_a_broken_file(tmp_path):
    from monai.bundle import verify_metadata

    meta = json.loads(_config("isic", "meta").read_text())
    del meta["required_packages_version"]
    broken = tmp_path / "metadata.json"
    broken.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="required_packages_version"):
        verify_metadata(meta_file=str(broken), filepath=str(SCHEMA))


@pytest.mark.parametrize("flavour", ["isic", "synapse"])
def test_verify_net_in_out(flavour):
    """The paper-size network of inference.json against the metadata's shapes and channels.

    The Synapse metadata declares the 3D volume (``[224, 224, "*"]``) that the slice-wise inferer handles, so that
    MONAI Label reports a 3D model; the network itself sees 2D slices, so the check runs on the slice shape.
    """
    from monai.bundle import verify_net_in_out

    override = {"bundle_root": str(BUNDLE), "scan_backend": "torch"}
    if flavour == "synapse":
        for io in ("inputs#image", "outputs#pred"):
            shape = json.loads(_config(flavour, "meta").read_text())["network_data_format"][io.split("#")[0]]
            shape = shape[io.split("#")[1]]["spatial_shape"]
            override[f"_meta_#network_data_format#{io}#spatial_shape"] = shape[:2]
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(_config(flavour, "meta")),
        config_file=str(_config(flavour, "infer")),
        device="cpu",
        n=1,
        **override,
    )


def _tiny_checkpoint(folder: Path, in_channels: int, out_channels: int, name: str = "model.pt") -> Path:
    from vmunet_monai.networks.nets import VMUNet

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    net = VMUNet(in_channels=in_channels, out_channels=out_channels, drop_path_rate=0.0, **TINY)
    torch.save(net.state_dict(), folder / name)
    (folder / "model_info.json").write_text(json.dumps({"image_size": 64, "network": TINY}))
    return folder / name


def _fake_synapse(root: Path) -> Path:
    """TransUNet layout: two training slices (npz) and one test volume (h5), random but well-formed."""
    import h5py

    rng = np.random.default_rng(0)
    (root / "train_npz").mkdir(parents=True)
    (root / "test_vol_h5").mkdir()
    for i in range(2):
        np.savez(root / "train_npz" / f"case0005_slice{i:03d}.npz",
                 image=rng.random((64, 64), dtype=np.float32), label=rng.integers(0, 9, (64, 64)).astype(np.float32))
    with h5py.File(root / "test_vol_h5" / "case0001.npy.h5", "w") as f:
        f["image"] = rng.random((3, 64, 64), dtype=np.float32)
        f["label"] = rng.integers(0, 9, (3, 64, 64)).astype(np.float32)
    return root


def _workflow_args(flavour: str, kind: str, tmp_path: Path) -> tuple[str, list[str], dict]:
    """(workflow_type, config files, overrides) with fake data / a tiny checkpoint as the config needs."""
    files = {"train": ["train"], "evaluate": ["train", "evaluate"], "infer": ["infer"]}[kind]
    config_files = [str(_config(flavour, f)) for f in files]
    override: dict = {"bundle_root": str(BUNDLE)}
    if flavour == "isic" and kind != "train":
        override["ckpt_dir"] = str(tmp_path / "models")
        _tiny_checkpoint(tmp_path / "models", 3, 1)
    if flavour == "synapse":
        if kind != "infer":
            override["dataset_dir"] = str(_fake_synapse(tmp_path / "synapse"))
        if kind == "evaluate":
            override["ckpt_dir"] = str(tmp_path / "models")
            _tiny_checkpoint(tmp_path / "models", 1, 9, name="synapse_model.pt")
    return ("infer" if kind == "infer" else "train"), config_files, override


@pytest.mark.parametrize("flavour", ["isic", "synapse"])
@pytest.mark.parametrize("kind", ["train", "evaluate", "infer"])
def test_config_workflow_check_properties(flavour, kind, tmp_path):
    from monai.bundle import ConfigWorkflow

    workflow_type, config_files, override = _workflow_args(flavour, kind, tmp_path)
    workflow = ConfigWorkflow(
        workflow_type=workflow_type,
        config_file=config_files if len(config_files) > 1 else config_files[0],
        meta_file=str(_config(flavour, "meta")),
        logging_file=str(CONFIGS / "logging.conf"),
        **override,
    )
    workflow.initialize()
    missing = workflow.check_properties()
    assert missing == [], f"{flavour} {kind}: properties missing or wrong: {missing}"


def test_monai_label_synapse_bundle_is_a_standard_bundle(tmp_path):
    """The Synapse bundle folder assembled for MONAI Label passes the same checks under the standard names."""
    from monai.bundle import ConfigWorkflow, verify_metadata

    from vmunet_monai.monailabel_app import assemble_bundle

    _config("synapse", "infer")
    checkpoint = _tiny_checkpoint(tmp_path / "ckpt", 1, 9)
    dst = assemble_bundle("synapse", tmp_path / "vmunet_synapse_segmentation", checkpoint=checkpoint)
    for name in ("inference.json", "train.json", "metadata.json", "logging.conf"):
        assert (dst / "configs" / name).is_file(), name
    assert (dst / "models" / "model.pt").is_file()
    verify_metadata(meta_file=str(dst / "configs" / "metadata.json"), filepath=str(SCHEMA))
    workflow = ConfigWorkflow(
        workflow_type="infer",
        config_file=str(dst / "configs" / "inference.json"),
        meta_file=str(dst / "configs" / "metadata.json"),
        bundle_root=str(dst),
        **{f"network_def#{k}": v for k, v in TINY.items()},
    )
    workflow.initialize()
    assert workflow.check_properties() == []
    with pytest.raises(ValueError, match="segmentation"):
        assemble_bundle("synapse", tmp_path / "vmunet_synapse")

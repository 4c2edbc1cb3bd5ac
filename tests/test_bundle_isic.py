"""The ISIC bundle end to end on the embedded sample: monai.bundle CLI forms, ConfigWorkflow properties,
metadata, evaluation report, inference at the original size, kill -9 and resume, torchrun with gloo.

Runs are tiny (32 x 32 images, a slim VM-UNet, one to three epochs) to keep CI fast.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundle"
BIN = Path(sys.executable).parent
TINY = [
    "--image_size", "32", "--batch_size", "8",
    "--network_def#dims", "[8,16,32,64]", "--network_def#depths", "[1,1,1,1]",
    "--network_def#depths_decoder", "[1,1,1,1]", "--network_def#d_state", "4",
]
ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "2"}


def _copy_bundle(dst: Path) -> Path:
    import shutil

    shutil.copytree(BUNDLE, dst, ignore=shutil.ignore_patterns("models", "eval", "runs", "__pycache__"))
    (dst / "models").mkdir()
    return dst


def _run(args: list[str], cwd: Path, timeout: int = 400) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(args)}\n--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}"
    return proc


def _bundle_run(*args: str) -> list[str]:
    return [sys.executable, "-m", "monai.bundle", "run", *args]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The README's main command, from the bundle folder, with tiny sizes: ``run training``."""
    root = _copy_bundle(tmp_path_factory.mktemp("bundle") / "bundle")
    proc = _run(_bundle_run("training", "--config_file", "configs/train.json", "--epochs", "1", *TINY), cwd=root)
    return root, proc.stdout + proc.stderr


def test_train_run_training_outputs(trained):
    root, log = trained
    state = torch.load(root / "models" / "demo" / "model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert "patch_embed.proj.weight" in state and not any(k.startswith("module.") for k in state)
    info = json.loads((root / "models" / "demo" / "model_info.json").read_text())
    assert info["image_size"] == 32 and info["network"]["dims"] == [8, 16, 32, 64] and info["recipe"] == "demo"
    latest = torch.load(root / "models" / "demo" / "latest.pt", weights_only=True)
    assert latest["trainer"]["epoch"] == 1 and {"model", "optimizer", "lr_scheduler"} <= set(latest)
    history = json.loads((root / "eval" / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1]
    assert 0.0 <= history[0]["val_dsc"] <= 1.0 and history[0]["epoch_time_s"] > 0 and history[0]["lr"] == 1e-3
    assert (root / "eval" / "history.csv").read_text().startswith("epoch,")
    assert Image.open(root / "eval" / "learning_curve.png").size[0] > 0
    assert list((root / "eval").glob("events.out.tfevents.*"))  # TensorBoard
    assert "run ETA" in log and "iter 3/3" in log  # per-iteration progress (21 training images / batch 8)


def test_evaluate_zoo_form_writes_report(trained):
    root, _ = trained
    _run(_bundle_run("--config_file", "['configs/train.json','configs/evaluate.json']"), cwd=root)
    report_dir = root / "eval" / "evaluation"
    report = json.loads((report_dir / "metrics.json").read_text())
    assert report["num_images"] == 11  # the sample's test split
    assert report["metrics"]["val_dsc"] == pytest.approx(report["isic_pixel_pooled"]["dsc"])
    cm = report["confusion_matrix"]
    assert cm["tn"] + cm["fp"] + cm["fn"] + cm["tp"] == 11 * 32 * 32
    rows = (report_dir / "per_image_scores.csv").read_text().strip().splitlines()
    assert rows[0].startswith("file,dice,iou") and len(rows) == 12
    assert "isic_miou" in (report_dir / "metrics.csv").read_text()
    overlays = sorted((report_dir / "overlays").glob("*.png"))
    assert len(overlays) == 11 and Image.open(overlays[0]).size == (3 * 32, 32)  # image | truth | prediction


def test_two_process_evaluation_matches_one_process(trained, tmp_path):
    """multi_gpu_evaluate.json (torchrun, 2 ranks, gloo) reports what evaluate.json reports on one process."""
    root, _ = trained
    reports = {}
    for ranks in (1, 2):
        out = tmp_path / f"ranks{ranks}"
        configs = ["configs/train.json", "configs/evaluate.json"] + (["configs/multi_gpu_evaluate.json"] if ranks > 1 else [])
        launcher = ([str(BIN / "torchrun"), "--standalone", "--nnodes=1", f"--nproc_per_node={ranks}", "-m", "monai.bundle"]
                    if ranks > 1 else [sys.executable, "-m", "monai.bundle"])
        _run(launcher + ["run", "--config_file", str(configs), "--output_dir", str(out), "--num_workers", "2", *TINY[:2]],
             cwd=root)
        reports[ranks] = (json.loads((out / "evaluation" / "metrics.json").read_text()),
                          (out / "evaluation" / "per_image_scores.csv").read_text())
        assert len(list((out / "evaluation" / "overlays").glob("*.png"))) == 11  # each rank wrote its shard's
    (one, one_rows), (two, two_rows) = reports[1], reports[2]
    assert two["ranks"] == 2 and two["num_images"] == one["num_images"] == 11
    assert two["confusion_matrix"] == one["confusion_matrix"]
    assert two_rows == one_rows  # same images, same order, same scores
    for name, value in one["metrics"].items():
        assert two["metrics"][name] == pytest.approx(value, abs=1e-6), name


def test_infer_zoo_form_original_sizes(trained, tmp_path):
    root, _ = trained
    images = tmp_path / "my_images"
    images.mkdir()
    source = sorted((root / "sample_data" / "isic" / "images").glob("*.jpg"))[0]
    Image.open(source).resize((120, 90)).save(images / "wide.jpg")
    Image.open(source).convert("RGBA").resize((70, 100)).save(images / "tall_rgba.png")
    out = tmp_path / "masks"
    _run(_bundle_run("--config_file", "configs/inference.json", "--dataset_dir", str(images), "--output_dir", str(out),
                     "--ckpt_dir", "models/demo"), cwd=root)
    for name, size in (("wide", (120, 90)), ("tall_rgba", (70, 100))):
        mask = Image.open(out / f"{name}_seg.png")
        assert mask.size == size and set(np.unique(np.asarray(mask))) <= {0, 255}
        assert Image.open(out / f"{name}_overlay.png").size == size
    # the documented CUDA-graph inferer override gives the same masks (on CPU it runs the ordinary forward)
    graphed = tmp_path / "masks_graph"
    _run(_bundle_run("--config_file", "configs/inference.json", "--dataset_dir", str(images), "--output_dir", str(graphed),
                     "--ckpt_dir", "models/demo", "--save_overlay", "False",
                     "--inferer#_target_", "vmunet_monai.workflows.inferers.CUDAGraphInferer"), cwd=root)
    for name in ("wide", "tall_rgba"):
        assert np.array_equal(np.asarray(Image.open(graphed / f"{name}_seg.png")), np.asarray(Image.open(out / f"{name}_seg.png")))


def test_config_workflow_properties(trained):
    from monai.bundle import ConfigWorkflow

    root, _ = trained
    common = {"meta_file": str(root / "configs" / "metadata.json"), "logging_file": str(root / "configs" / "logging.conf")}
    train = ConfigWorkflow(workflow_type="train", config_file=str(root / "configs" / "train.json"),
                           bundle_root=str(root), **common)
    train.initialize()
    assert not train.check_properties()
    assert train.max_epochs == 12 and train.train_dataset_data  # demo recipe, sample datalist
    infer = ConfigWorkflow(workflow_type="infer", config_file=str(root / "configs" / "inference.json"),
                           bundle_root=str(root), ckpt_dir=str(root / "models" / "demo"), **common)
    infer.initialize()  # loads models/demo/model.pt (a 32 px slim model, read back from model_info.json)
    assert not infer.check_properties()


def test_metadata_verifies_offline_and_monai_label_labels():
    from monai.bundle import verify_metadata

    meta = BUNDLE / "configs" / "metadata.json"
    verify_metadata(meta_file=str(meta), filepath=str(BUNDLE / "configs" / "schema" / "meta_schema_20240725.json"))
    content = json.loads(meta.read_text())
    pred = next(iter(content["network_data_format"]["outputs"].values()))
    labels = {v.lower(): int(k) for k, v in pred["channel_def"].items() if v.lower() != "background"}
    assert labels == {"lesion": 1}  # MONAI Label's rule (BundleInferTask): the lesion is label 1
    assert len(next(iter(content["network_data_format"]["inputs"].values()))["spatial_shape"]) == 2


def _latest_epoch(path: Path) -> int:
    return int(torch.load(path, weights_only=True)["trainer"]["epoch"])


def test_kill_and_resume(tmp_path):
    root = _copy_bundle(tmp_path / "bundle")
    args = _bundle_run("--config_file", "configs/train.json", "--epochs", "3", "--t_max", "3", *TINY)
    latest = root / "models" / "demo" / "latest.pt"
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(args, cwd=root, env=ENV, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 400
        history_file = root / "eval" / "history.json"
        while not (latest.exists() and history_file.exists()) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)  # kill -9 while epoch 2 runs
        proc.wait()
    assert latest.exists(), (tmp_path / "first.log").read_text()[-3000:]
    killed_at = _latest_epoch(latest)
    assert killed_at < 3
    torch.load(root / "models" / "demo" / "model.pt", weights_only=True)  # never left corrupt
    proc = _run(args, cwd=root)  # the same command again
    assert f"resumed from models/demo/latest.pt at epoch {killed_at}" in proc.stdout + proc.stderr
    checkpoint = torch.load(latest, weights_only=True)
    assert checkpoint["trainer"]["epoch"] == 3
    assert checkpoint["lr_scheduler"]["last_epoch"] == 3
    expected_lr = 1e-5 + (1e-3 - 1e-5) * (1 + math.cos(math.pi * 3 / 3)) / 2  # cosine after 3 epoch steps
    assert checkpoint["optimizer"]["param_groups"][0]["lr"] == pytest.approx(expected_lr)
    steps = {float(s["step"]) for s in checkpoint["optimizer"]["state"].values()}
    assert steps == {9.0}  # 3 epochs x 3 iterations: the AdamW state was carried over, not restarted
    history = json.loads((root / "eval" / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert history[killed_at]["lr"] == pytest.approx(1e-5 + (1e-3 - 1e-5) * (1 + math.cos(math.pi * killed_at / 3)) / 2)


def test_cli_train_evaluate_infer_and_bad_input(tmp_path):
    root = _copy_bundle(tmp_path / "bundle")
    cli = str(BIN / "vmunet-monai")
    dirs = ["--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "out")]
    _run([cli, "train", "--bundle_root", str(root), "--epochs", "1", "--device", "cpu", *TINY, *dirs], cwd=tmp_path)
    assert (tmp_path / "models" / "model.pt").is_file()
    _run([cli, "evaluate", "--bundle_root", str(root), "--eval_split", "validation", *dirs], cwd=tmp_path)
    assert json.loads((tmp_path / "out" / "evaluation" / "metrics.json").read_text())["num_images"] == 4
    images = tmp_path / "three_images"
    images.mkdir()
    for source in sorted((root / "sample_data" / "isic" / "images").glob("*.jpg"))[:3]:
        (images / source.name).write_bytes(source.read_bytes())
    _run([cli, "infer", "--bundle_root", str(root), "--input_dir", str(images), "--ckpt_dir", str(tmp_path / "models"),
          "--output_dir", str(tmp_path / "pred"), "--save_overlay", "False"], cwd=tmp_path)
    assert len(list((tmp_path / "pred").glob("*_seg.png"))) == 3 and not list((tmp_path / "pred").glob("*_overlay.png"))
    (tmp_path / "empty").mkdir()
    bad = subprocess.run([cli, "infer", "--bundle_root", str(root), "--input_dir", str(tmp_path / "empty"), *dirs],
                         cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1
    assert f"{tmp_path / 'empty'}: no image files" in bad.stderr and "Traceback" not in bad.stderr


def test_torchrun_two_processes_gloo(tmp_path):
    root = _copy_bundle(tmp_path / "bundle")
    args = [str(BIN / "torchrun"), "--standalone", "--nnodes=1", "--nproc_per_node=2", "-m", "monai.bundle", "run",
            "--config_file", "['configs/train.json','configs/multi_gpu_train.json']", "--epochs", "1", *TINY]
    proc = _run(args, cwd=root)
    state = torch.load(root / "models" / "demo" / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state)  # saved from the unwrapped DDP module
    assert torch.load(root / "models" / "demo" / "latest.pt", weights_only=True)["trainer"]["epoch"] == 1
    (row,) = json.loads((root / "eval" / "history.json").read_text())
    assert row["world_size"] == 2 and row["lr_ranks"] == [1e-3, 1e-3]  # both ranks on the same schedule
    assert 0.0 < row["train_loss"] < 10.0  # mean over the iterations of both ranks
    assert (proc.stdout + proc.stderr).count("iter 2/2") == 1  # 21 images / 2 ranks / batch 8; rank 0 logs only


def test_load_pretrained_recipe_helper(tmp_path):
    from vmunet_monai.networks.nets import VMUNet
    from vmunet_monai.workflows.recipes import load_pretrained

    def tiny(seed):
        torch.manual_seed(seed)
        return VMUNet(dims=(8, 16, 32, 64), depths=(1, 1, 1, 1), depths_decoder=(1, 1, 1, 1), d_state=4)

    source, target = tiny(0), tiny(1)
    torch.save(source.state_dict(), tmp_path / "vmunet.pt")
    before = {k: v.clone() for k, v in target.state_dict().items()}
    assert load_pretrained(target, "") is target and all(torch.equal(before[k], v) for k, v in target.state_dict().items())
    load_pretrained(target, str(tmp_path / "vmunet.pt"), kind="vmunet")
    assert all(torch.equal(source.state_dict()[k], v) for k, v in target.state_dict().items())
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_pretrained(target, str(tmp_path / "missing.pt"))

"""MONAI Label end to end: the real monailabel 0.8.5 server serves our bundles over HTTP, and trains one.

MONAI Label needs its own environment (it brings torch 2.14.1 + torchvision; see scripts/monailabel_setup.sh), so the
server runs in ``.venv-monailabel`` (or ``$VMUNET_MONAILABEL_VENV``) while this test drives it over HTTP from the
test interpreter. The test is skipped, with that reason, only when that environment is missing.

What runs (bounded: the server must answer within ``START_TIMEOUT`` s, each request within ``REQUEST_TIMEOUT`` s):

1. ``vmunet_monai.monailabel_app.prepare_app`` (inside the MONAI Label venv) copies MONAI Label's own ``monaibundle``
   app and assembles two local bundles: ``vmunet_isic_segmentation`` (2D) and ``vmunet_synapse_segmentation``
   (``configs/synapse_*.json`` under the standard names), small networks so that CPU inference takes seconds.
2. ``monailabel start_server --app ... --conf models <both> --conf zoo_source local`` on 127.0.0.1 and a free port.
3. ``POST /infer`` with a real ISIC image of the embedded sample -> PNG mask: the image's size, values {0, 1}, not
   empty and overlapping the ground truth (Dice > 0.5). The weights are ``bundle/models/model.pt`` when the bundle
   ships a trained model, otherwise the bundle's demo recipe is trained first (``vmunet-monai train``, ~30 s).
4. ``POST /infer`` with the embedded CT volume -> label NIfTI: the volume's shape and affine, labels in 0..8.
   (The Synapse weights are a seeded random tiny network: this checks the plumbing, not the segmentation.)
5. ``POST /train`` of the ISIC bundle for one epoch on the local datastore (4 labelled images) with
   ``pretrained: true`` (MONAI Label 0.8.5 fails on ``false``): the checkpoint is rewritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundle"
ML_VENV = Path(os.environ.get("VMUNET_MONAILABEL_VENV", REPO / ".venv-monailabel"))
ML_PYTHON = ML_VENV / "bin" / "python"
START_TIMEOUT = 150
REQUEST_TIMEOUT = 120
TRAIN_TIMEOUT = 300
TINY = {"dims": [8, 16, 32, 64], "depths": [1, 1, 1, 1], "depths_decoder": [1, 1, 1, 1], "d_state": 4}
ISIC_NAMES = ["ISIC_0000025", "ISIC_0000321", "ISIC_0000344", "ISIC_0000395"]

pytestmark = pytest.mark.skipif(
    not ML_PYTHON.is_file(),
    reason=f"MONAI Label environment not found at {ML_VENV} (create it with: bash scripts/monailabel_setup.sh)",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _multipart(fields: dict[str, str]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()
    )
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _post(url: str, data: bytes, content_type: str) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _isic_pairs() -> list[tuple[Path, Path]]:
    pairs = [(BUNDLE / "sample_data/isic/images" / f"{n}.jpg", BUNDLE / "sample_data/isic/masks" / f"{n}_segmentation.png")
             for n in ISIC_NAMES]
    if not all(i.is_file() and m.is_file() for i, m in pairs):
        pytest.skip("the embedded ISIC sample (bundle/sample_data/isic) is incomplete")
    return pairs


def _isic_model(folder: Path) -> tuple[Path, dict]:
    """(checkpoint, model_info) of a trained ISIC model.

    The bundle's shipped ``models/model.pt`` (or ``$VMUNET_ISIC_MODEL``, with its ``model_info.json`` beside it);
    otherwise the bundle's demo recipe is trained here on the embedded sample (``vmunet-monai train``: a small
    network, 64 x 64, about half a minute on 2 CPU cores), so that "the mask is not empty" is a real check.
    """
    shipped = Path(os.environ.get("VMUNET_ISIC_MODEL", BUNDLE / "models" / "model.pt"))
    if not shipped.is_file():
        ckpt_dir = folder / "demo_models"
        cmd = [sys.executable, "-m", "vmunet_monai.cli", "train", "--ckpt_dir", str(ckpt_dir),
               "--output_dir", str(folder / "demo_eval")]
        proc = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, timeout=TRAIN_TIMEOUT,
                              env=dict(os.environ, PYTHONWARNINGS="ignore"))
        assert proc.returncode == 0, f"demo training failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        shipped = ckpt_dir / "model.pt"
    info = shipped.with_name("model_info.json")
    return shipped, (json.loads(info.read_text()) if info.is_file() else {})


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    work = tmp_path_factory.mktemp("monailabel")
    ct = BUNDLE / "sample_data" / "ct" / "example_ct_sm.nii.gz"
    if not ct.is_file():
        pytest.skip("the embedded CT sample (bundle/sample_data/ct/example_ct_sm.nii.gz) is missing")
    # datastore: 4 ISIC images with their masks as final labels, and the CT volume
    studies = work / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    for image, mask in _isic_pairs():
        shutil.copyfile(image, studies / image.name)
        shutil.copyfile(mask, studies / "labels" / "final" / f"{image.stem}.png")
    shutil.copyfile(ct, studies / ct.name)

    isic_ckpt, isic_info = _isic_model(work)
    isic_net = isic_info.get("network", {})
    torch.manual_seed(0)
    from vmunet_monai.networks.nets import VMUNet

    synapse_ckpt = work / "synapse_tiny.pt"
    torch.save(VMUNet(in_channels=1, out_channels=9, drop_path_rate=0.0, **TINY).state_dict(), synapse_ckpt)
    synapse_net = {f"network_def#{k}": v for k, v in TINY.items()}
    spec = {
        "app_dir": str(work / "app"),
        "flavours": ["isic", "synapse"],
        "overrides": {
            "isic": {"train.json": {**{f"network_def#{k}": v for k, v in isic_net.items() if k in TINY},
                                    "recipe_name": "demo", "num_workers": 0, "cache_rate": 0.0}},
            "synapse": {"inference.json": {**synapse_net, "image_size": 64, "sw_batch_size": 8},
                        "train.json": {**synapse_net, "image_size": 64}},
        },
        "checkpoints": {"isic": str(isic_ckpt), "synapse": str(synapse_ckpt)},
        "model_infos": {"isic": isic_info} if isic_info else None,
    }
    script = "import json, sys; from vmunet_monai.monailabel_app import prepare_app; " \
             "print(json.dumps(prepare_app(**json.loads(sys.argv[1]))))"
    out = subprocess.run([str(ML_PYTHON), "-c", script, json.dumps(spec)], capture_output=True, text=True,
                         timeout=120, cwd=work)
    assert out.returncode == 0, out.stderr[-3000:]
    app = json.loads(out.stdout.strip().splitlines()[-1])
    assert app["app"] == "monaibundle", "MONAI Label's own monaibundle app was not found in the venv"

    port = _free_port()
    command = [str(ML_PYTHON), "-m", "monailabel.main"] + app["command"][1:]
    command[command.index("<STUDIES>")] = str(studies)
    command[command.index("--port") + 1] = str(port)
    env = dict(os.environ, PATH=f"{ML_VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
               MONAI_LABEL_TRACKING_ENABLED="false", MONAI_LABEL_SESSION_PATH=str(work / "sessions"),
               PYTHONWARNINGS="ignore")
    env.pop("PYTHONPATH", None)
    log = open(work / "server.log", "w")
    proc = subprocess.Popen(command, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT
    info = None
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{base}/info/", timeout=5) as response:
                info = json.loads(response.read())
                break
        except (urllib.error.URLError, ConnectionError, socket.timeout):
            time.sleep(1)
    try:
        if info is None:
            log.flush()
            tail = (work / "server.log").read_text()[-4000:]
            pytest.fail(f"MONAI Label did not start within {START_TIMEOUT} s (exit code {proc.poll()}):\n{tail}")
        yield {"base": base, "info": info, "studies": studies, "app": app, "work": work, "log": work / "server.log",
               "cache": {}}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and the workers it started
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def test_app_lists_both_bundles(server):
    models = server["info"]["models"]
    assert {"vmunet_isic_segmentation", "vmunet_synapse_segmentation"} <= set(models)
    assert models["vmunet_isic_segmentation"]["dimension"] == 2
    assert "lesion" in models["vmunet_isic_segmentation"]["labels"]
    assert models["vmunet_synapse_segmentation"]["labels"]["liver"] == 5


def _isic_prediction(server) -> tuple[bytes, np.ndarray, np.ndarray, np.ndarray]:
    """POST /infer for the first ISIC image once: (payload, mask, image, ground truth)."""
    from PIL import Image

    if "isic" not in server["cache"]:
        body, ctype = _multipart({"params": json.dumps({"result_extension": ".png", "result_dtype": "uint8"})})
        url = f"{server['base']}/infer/vmunet_isic_segmentation?image={ISIC_NAMES[0]}&output=image"
        status, payload = _post(url, body, ctype)
        assert status == 200, payload[-2000:]
        out = server["work"] / "isic_pred.png"
        out.write_bytes(payload)
        mask = np.array(Image.open(out))
        image = np.array(Image.open(server["studies"] / f"{ISIC_NAMES[0]}.jpg"))
        truth = np.array(Image.open(server["studies"] / "labels" / "final" / f"{ISIC_NAMES[0]}.png")) > 0
        server["cache"]["isic"] = (payload, mask, image, truth)
    return server["cache"]["isic"]


def test_infer_isic_png(server):
    payload, mask, image, _ = _isic_prediction(server)
    assert payload[:8] == b"\x89PNG\r\n\x1a\n"
    assert mask.ndim == 2 and mask.shape == image.shape[:2], f"mask {mask.shape} vs image {image.shape}"
    values = set(np.unique(mask).tolist())
    assert values <= {0, 1} or values <= {0, 255}, values


def test_infer_isic_mask_not_empty(server):
    """Trained weights: the served mask covers the lesion (checks MONAI Label's pre/post-processing end to end)."""
    _, mask, _, truth = _isic_prediction(server)
    lesion = mask > 0
    dice = 2 * (lesion & truth).sum() / max(1, lesion.sum() + truth.sum())
    print(f"MONAI Label ISIC mask: {lesion.mean():.1%} lesion, Dice vs ground truth {dice:.3f}")
    assert lesion.any(), "empty mask for a lesion image"
    assert dice > 0.5, f"the served mask does not overlap the lesion (Dice {dice:.3f})"


def test_infer_ct_nifti(server):
    import nibabel as nib

    body, ctype = _multipart({"params": "{}"})
    status, payload = _post(f"{server['base']}/infer/vmunet_synapse_segmentation?image=example_ct_sm&output=image",
                            body, ctype)
    assert status == 200, payload[-2000:]
    out = server["work"] / "ct_pred.nii.gz"
    out.write_bytes(payload)
    pred, ct = nib.load(out), nib.load(server["studies"] / "example_ct_sm.nii.gz")
    labels = np.asarray(pred.dataobj)
    assert labels.shape == ct.shape
    assert np.allclose(pred.affine, ct.affine, atol=1e-4)
    assert set(np.unique(labels).tolist()) <= set(range(9))
    assert (labels > 0).any()


def test_train_isic_one_epoch(server):
    checkpoint = Path(server["app"]["bundles"]["vmunet_isic_segmentation"]) / "models" / "model.pt"
    before = _sha(checkpoint)
    request = {"max_epochs": 1, "pretrained": True, "device": "cpu", "multi_gpu": False, "val_split": 0.25,
               "tracking": "none"}
    status, payload = _post(f"{server['base']}/train/vmunet_isic_segmentation?run_sync=true",
                            json.dumps(request).encode(), "application/json")
    log = server["log"].read_text()
    assert status == 200, payload[-2000:]
    assert "Training Finished" in log, log[-3000:]
    assert _sha(checkpoint) != before, "the bundle training task did not write models/model.pt"
    # the new checkpoint still loads with weights_only=True into the served network
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert any(k.startswith("final_conv") for k in state)

"""Export: the ``export`` scan backend, torch.export, ONNX (onnxruntime parity on a real image), TorchScript.

The networks are tiny (widths 8..64, one block per stage) and the images 32x32 or 64x64 so that each export takes
seconds; the paper-size export is measured with ``vmunet-monai export --image_size 256`` (numbers in docs/ecosystem.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vmunet_monai.export import build_network, load_weights, onnx_scan_nodes, predict_mask, run_onnx
from vmunet_monai.ops import selective_scan_fn

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundle"
TINY = dict(dims=(8, 16, 32, 64), depths=(1, 1, 1, 1), depths_decoder=(1, 1, 1, 1), d_state=4)
TINY_CLI = ["--dims", "[8,16,32,64]", "--depths", "[1,1,1,1]", "--depths_decoder", "[1,1,1,1]", "--d_state", "4"]
SS2D_LAYERS = 8  # one VSS block per stage: 4 encoder + 4 decoder stages


def _sample_image() -> Path:
    images = sorted((BUNDLE / "sample_data" / "isic" / "images").glob("*.jpg"))
    if not images:
        pytest.skip("the embedded ISIC sample (bundle/sample_data/isic/images) is missing")
    return images[0]


def _tiny_checkpoint(folder: Path, out_channels: int = 1, seed: int = 0) -> Path:
    """A seeded tiny VM-UNet state dict plus the model_info.json the bundle's inference config reads."""
    torch.manual_seed(seed)
    net = build_network(out_channels=out_channels, **TINY)
    path = folder / "model.pt"
    torch.save(net.state_dict(), path)
    info = {"image_size": 64, "network": {k: list(v) if isinstance(v, tuple) else v for k, v in TINY.items()}}
    (folder / "model_info.json").write_text(json.dumps(info))
    return path


def _image_input(size: int = 64) -> torch.Tensor:
    from vmunet_monai.transforms.isic import isic_eval_transforms

    item = isic_eval_transforms(size, with_label=False)({"image": str(_sample_image())})
    return torch.as_tensor(item["image"]).float()[None]


def _run_cli(*args: str, timeout: int = 600) -> str:
    cmd = [sys.executable, "-m", "vmunet_monai.cli", *args]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.mark.parametrize("groups_dim", [3, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_export_scan_matches_reference(groups_dim, dtype):
    torch.manual_seed(0)
    batch, channels, length, n_state = 2, 8, 37, 3
    u = torch.randn(batch, channels, length, dtype=dtype)
    delta = torch.randn(batch, channels, length, dtype=dtype)
    A = -torch.rand(channels, n_state, dtype=dtype) * 4
    shape = (batch, n_state, length) if groups_dim == 3 else (batch, 2, n_state, length)
    B, C = torch.randn(shape, dtype=dtype), torch.randn(shape, dtype=dtype)
    kwargs = dict(
        D=torch.randn(channels, dtype=dtype),
        z=torch.randn(batch, channels, length, dtype=dtype),
        delta_bias=torch.randn(channels, dtype=dtype),
        delta_softplus=True,
        return_last_state=True,
    )
    y, h = selective_scan_fn(u, delta, A, B, C, backend="export", **kwargs)
    y_ref, h_ref = selective_scan_fn(u, delta, A, B, C, backend="reference", **kwargs)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    assert y.dtype == dtype and y.shape == (batch, channels, length)
    torch.testing.assert_close(y, y_ref, atol=tol, rtol=tol)
    torch.testing.assert_close(h.to(dtype), h_ref.to(dtype), atol=tol, rtol=tol)


def test_network_export_backend_matches_torch_backend():
    torch.manual_seed(1)
    net = build_network(**TINY)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        y_export = net(x)
        y_torch = net.set_scan_backend("torch")(x)
    print(f"export vs torch backend: max abs diff {float((y_export - y_torch).abs().max()):.3g}")
    torch.testing.assert_close(y_export, y_torch, atol=1e-4, rtol=1e-4)


def test_export_rejects_bad_arguments(tmp_path):
    from vmunet_monai.export import export

    with pytest.raises(ValueError, match="kind must be one of"):
        export("tflite", dst=tmp_path / "x")
    with pytest.raises(ValueError, match="multiple of 32"):
        export("onnx", dst=tmp_path / "x.onnx", image_size=48, **TINY)
    with pytest.raises(ValueError, match="opset must be 18 or newer"):
        export("onnx", dst=tmp_path / "x.onnx", image_size=64, opset=13, **TINY)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt"):
        load_weights(build_network(**TINY), bad)
    torch.save({"model": {"final_conv.weight": torch.zeros(3)}}, tmp_path / "wrong.pt")
    with pytest.raises(ValueError, match="does not fit the network"):
        load_weights(build_network(**TINY), tmp_path / "wrong.pt")


def test_cli_torch_export_roundtrip(tmp_path):
    """`vmunet-monai export --kind torch_export`: small graph (one scan node per SS2D layer), same output."""
    ckpt = _tiny_checkpoint(tmp_path)
    dst = tmp_path / "tiny.pt2"
    out = _run_cli("export", "--kind", "torch_export", "--dst", str(dst), "--checkpoint", str(ckpt),
                   "--image_size", "64", *TINY_CLI)
    print(out.strip().splitlines()[-1] if out.strip() else out)
    program = torch.export.load(str(dst))
    targets = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    assert sum("scan" in t for t in targets) == SS2D_LAYERS, "the scan must stay one node per SS2D layer"
    assert len(targets) < 1500, f"graph has {len(targets)} nodes: the scan was unrolled"
    net = load_weights(build_network(**TINY), ckpt)
    x = _image_input(64)
    with torch.no_grad():
        expected, got = net(x), program.module()(x)
    diff = float((expected - got).abs().max())
    print(f"torch.export parity on a real ISIC image: max abs diff {diff:.3g}")
    assert diff < 1e-4
    assert np.array_equal(predict_mask(expected), predict_mask(got))


def _assert_same_mask(expected: torch.Tensor, got: np.ndarray, diff: float) -> None:
    """Masks equal, except where PyTorch's logit is within the numeric difference of the 0 threshold."""
    ambiguous = (expected.abs() <= 10 * max(diff, 1e-7)).numpy()[:, 0]
    same = predict_mask(expected) == predict_mask(got)
    assert same[~ambiguous].all(), f"{int((~same & ~ambiguous).sum())} pixels differ away from the threshold"
    assert ambiguous.mean() < 0.01


def test_cli_onnx_export_parity_on_real_image(tmp_path):
    """`vmunet-monai export --kind onnx`: opset >= 17, Scan nodes instead of unrolled loops, onnxruntime parity."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    ckpt = _tiny_checkpoint(tmp_path, seed=2)
    dst = tmp_path / "tiny.onnx"
    out = _run_cli("export", "--kind", "onnx", "--dst", str(dst), "--checkpoint", str(ckpt), "--image_size", "64",
                   *TINY_CLI)
    print(out.strip().splitlines()[-1] if out.strip() else out)
    import onnx

    model = onnx.load(str(dst))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    counts = onnx_scan_nodes(dst)
    assert counts["scan"] == SS2D_LAYERS and counts["loop"] == 0
    assert counts["nodes"] < 4000, counts
    net = load_weights(build_network(**TINY), ckpt)
    for name, x in (("random", torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))),
                    ("real ISIC image", _image_input(64))):
        with torch.no_grad():
            expected = net(x)
        got = run_onnx(dst, x)
        diff = float(np.abs(expected.numpy() - got).max())
        print(f"onnxruntime vs PyTorch ({name}): max abs diff {diff:.3g}")
        assert got.shape == tuple(expected.shape)
        assert diff < 1e-4
        _assert_same_mask(expected, got, diff)


def test_monai_bundle_onnx_export(tmp_path):
    """MONAI's own `python -m monai.bundle onnx_export` on the bundle's inference.json (export scan backend)."""
    pytest.importorskip("onnxscript")
    if not (BUNDLE / "configs" / "inference.json").is_file():
        pytest.skip("bundle/configs/inference.json is not there yet")
    ckpt = _tiny_checkpoint(tmp_path, seed=4)
    dst = tmp_path / "bundle.onnx"
    cmd = [sys.executable, "-m", "monai.bundle", "onnx_export", "network_def", "--filepath", str(dst),
           "--ckpt_file", str(ckpt), "--meta_file", "configs/metadata.json", "--config_file",
           "configs/inference.json", "--ckpt_dir", str(tmp_path), "--input_shape", "[1, 3, 64, 64]",
           "--scan_backend", "export"]
    proc = subprocess.run(cmd, cwd=BUNDLE, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert onnx_scan_nodes(dst)["scan"] == SS2D_LAYERS
    net = load_weights(build_network(**TINY), ckpt)
    x = _image_input(64)
    with torch.no_grad():
        expected = net(x)
    got = run_onnx(dst, x)
    diff = float(np.abs(expected.numpy() - got).max())
    print(f"monai.bundle onnx_export, onnxruntime vs PyTorch (real image): max abs diff {diff:.3g}")
    assert diff < 1e-4
    _assert_same_mask(expected, got, diff)


def test_torchscript_trace_small(tmp_path):
    """TorchScript works by tracing (the scan unrolled): checked at 32x32 where the unrolled graph is small."""
    from vmunet_monai.export import export

    result = export("torchscript", dst=tmp_path / "tiny.ts", image_size=32, **TINY)
    print(f"torchscript (trace, 32x32): max abs diff {result['max_abs_diff']:.3g}")
    assert result["max_abs_diff"] < 1e-4
    assert result["mask_equal_fraction"] == 1.0

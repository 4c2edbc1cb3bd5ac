"""Benchmark: MAC counting (known answers), the JSON report of a tiny run, memory tracking, bad arguments."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from vmunet_monai.benchmark import benchmark, count_macs, peak_memory_tracker
from vmunet_monai.networks.nets import VMUNet
from vmunet_monai.ops import available_backends

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(dims=(8, 16, 32, 64), depths=(1, 1, 1, 1), depths_decoder=(1, 1, 1, 1), d_state=4)


def _fast_cpu_backend() -> str:
    return "cpu" if "cpu" in available_backends(torch.zeros(1)) else "torch"


def test_paper_model_macs_match_published_thop_count():
    """Reference section 3: thop counts 4.112 GMACs at 256x256; einsum + scan add about 2.55 G."""
    model = VMUNet().eval().set_scan_backend(_fast_cpu_backend())
    counted = count_macs(model, torch.randn(1, 3, 256, 256))
    assert round(counted["thop_macs"] / 1e9, 3) == 4.112
    assert round((counted["einsum_macs"] + counted["scan_macs"]) / 1e9, 2) == 2.55
    # 3 blocks at stage 0 (2 encoder + 1 decoder), 4 at each deeper stage
    expected_shapes = {(4096, 192, 16): 3, (1024, 384, 16): 4, (256, 768, 16): 4, (64, 1536, 16): 4}
    assert dict(counted["scan_shapes"]) == expected_shapes


def test_thop_rules_on_known_layers():
    """Linear: in*out_numel; conv: out_numel*(in/groups)*k*k (no bias); affine LayerNorm: 4*numel."""

    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 6, 3, padding=1)
            self.dw = nn.Conv2d(6, 6, 3, padding=1, groups=6)
            self.norm = nn.LayerNorm(6)
            self.fc = nn.Linear(6, 5)

        def forward(self, x):
            x = self.dw(self.conv(x)).permute(0, 2, 3, 1)
            return self.fc(self.norm(x))

    from vmunet_monai import benchmark as bench

    toy, total = Toy(), [0]

    def hook(module, inputs, output):
        total[0] += bench._thop_leaf_macs(module, inputs, output)

    for m in toy.modules():
        if not list(m.children()):
            m.register_forward_hook(hook)
    toy(torch.randn(2, 4, 5, 5))
    pixels = 2 * 5 * 5
    expected = pixels * 6 * 4 * 9 + pixels * 6 * 1 * 9 + 4 * pixels * 6 + pixels * 5 * 6
    assert total[0] == expected


def test_tiny_benchmark_writes_report(tmp_path):
    backends = ["torch", "reference"]
    out = tmp_path / "bench.json"
    report = benchmark(
        device="cpu",
        backends=backends,
        image_size=32,
        repeats=1,
        warmup=0,
        json_path=str(out),
        model_kwargs=SMALL,
        num_classes=2,
        quiet=True,
    )
    on_disk = json.loads(out.read_text())
    assert on_disk["model"]["parameters"] == sum(p.numel() for p in VMUNet(out_channels=2, **SMALL).parameters())
    assert on_disk["model"]["thop_macs"] > 0 and on_disk["model"]["scan_macs"] > 0
    rows = {(r["backend"], r["mode"]): r for r in on_disk["results"]}
    # latency for both; training only for torch (the reference is not trained by default)
    assert set(rows) == {("torch", "latency"), ("torch", "train"), ("reference", "latency")}
    for row in rows.values():
        assert row["time_ms_median"] > 0 and row["images_per_s"] > 0 and row["peak_mem_mib"] >= 0
    # same weights, same input: the backends agree
    assert rows[("reference", "latency")]["max_abs_diff"] < 1e-4
    assert torch.isfinite(torch.tensor(rows[("torch", "train")]["first_loss"]))
    per_forward = [r for r in on_disk["scans"] if r["L"] == "per forward"]
    assert {r["backend"] for r in per_forward} == set(backends)
    assert report["meta"]["threads"] == torch.get_num_threads()


def test_unavailable_backend_is_reported_not_fatal():
    report = benchmark(
        device="cpu", backends="mamba_ssm,torch", image_size=32, repeats=1, warmup=0, train=False, scans=False,
        macs=False, model_kwargs=SMALL, quiet=True,
    )
    skipped = [r for r in report["results"] if "skipped" in r]
    assert [r["backend"] for r in skipped] == ["mamba_ssm"] and "not available" in skipped[0]["skipped"]
    assert any(r["backend"] == "torch" and r["mode"] == "latency" for r in report["results"])


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(image_size=40), ValueError, "multiple of 32"),
        (dict(dtype="fp8"), ValueError, "unknown dtype"),
        (dict(device="cuda"), RuntimeError, "needs CUDA"),
    ],
)
def test_bad_arguments(kwargs, error, message):
    if kwargs.get("device") == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(error, match=message):
        benchmark(**{"model_kwargs": SMALL, "quiet": True, **kwargs})


def test_cpu_peak_memory_sees_a_large_allocation():
    # 256 MiB, touched: large against what other threads of a long test session may free meanwhile (with 64 MiB
    # this failed once after the Triton interpreter tests, the RSS dropping while the block was filled)
    with peak_memory_tracker(torch.device("cpu")) as mem:
        block = torch.ones(256 * 2**20 // 4)
        del block
    assert mem.peak_mib >= 192


def test_script_help_runs():
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "benchmark.py"), "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and "--train-batch-size" in proc.stdout


def test_gpu_profile_script_inputs_and_cpu_refusal():
    """scripts/gpu_profile.py builds the published SS2D init at each stage shape and, without CUDA, says so
    instead of failing inside torch."""
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import gpu_profile
    finally:
        sys.path.pop(0)
    for stage, (h, w, d, r) in gpu_profile.STAGE_SHAPES.items():
        x, (x_proj, dt_w, dt_b, a_logs, ds) = gpu_profile.make_inputs(stage, 1, torch.device("cpu"))
        assert x.shape == (1, h, w, d) and x_proj.shape == (4, r + 32, d) and dt_w.shape == (4, d, r)
        # dt biases are softplus^-1 of dts in [1e-3, 0.1] (the published dt_init)
        assert 1e-3 <= torch.nn.functional.softplus(dt_b).min() and torch.nn.functional.softplus(dt_b).max() <= 0.1
        assert a_logs.shape == (4 * d, 16) and ds.shape == (4 * d,)
    if not torch.cuda.is_available():
        proc = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_profile.py"), "core"],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode != 0 and "needs a CUDA device" in proc.stderr


def test_compiled_rows_match_the_ordinary_forward():
    """--compile: the forward under torch.compile(fullgraph=True) is timed and gives the ordinary forward's output."""
    report = benchmark(device="cpu", backends="torch", image_size=32, repeats=1, warmup=0, train=False, scans=False,
                       macs=False, compile=True, model_kwargs=SMALL, quiet=True)
    rows = {r["mode"]: r for r in report["results"]}
    assert set(rows) == {"latency", "latency_compiled"}
    assert "skipped" not in rows["latency_compiled"], rows["latency_compiled"].get("skipped")
    assert rows["latency_compiled"]["time_ms_median"] > 0
    assert rows["latency_compiled"]["max_abs_diff"] < 1e-4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs of the training step need a GPU")
def test_graph_train_rows_of_the_eager_and_compiled_model_agree():
    """The rows of --cuda-graph (--compile) on CUDA: the training step is captured once per model (eager, then under
    torch.compile) and the two graphs, started from the same weights and replayed as often, end at the same loss.
    The row function is called directly: ``benchmark(compile=True)`` would also compile three other rows."""
    from vmunet_monai import benchmark as bm

    dev = torch.device("cuda")
    torch.manual_seed(0)
    model = VMUNet(in_channels=3, out_channels=1, drop_path_rate=0.0, **SMALL).to(dev)  # no random stochastic depth
    model.set_scan_backend("triton").train()
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 64, 64, device=dev)
    target = bm._target(1, 2, 64, dev)
    loss_fn = bm._loss_fn(1)
    with torch.no_grad():
        first_loss = float(loss_fn(model(x), target))
    rows = {}
    for compiled in (False, True):
        model.load_state_dict(initial)
        row = bm._graph_train_row(model, x, target, loss_fn, None, dev, 2, 1, {}, True, compiled=compiled)
        assert "skipped" not in row, row.get("skipped")
        assert row["time_ms_median"] > 0 and math.isfinite(row["last_loss"])
        rows[row["mode"]] = row["last_loss"]
    # both graphs train (a fixed batch: the loss falls below the first one) along the same path (the compiled network
    # sums in other orders: trajectories drift apart slowly, not by the size of a training step)
    eager, compiled = rows["train_graph"], rows["train_compiled_graph"]
    assert max(eager, compiled) < first_loss
    assert abs(eager - compiled) <= 5e-2 * abs(eager), (eager, compiled)

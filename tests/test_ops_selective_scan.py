"""Selective-scan backends against the sequential reference: outputs, gradients, last state, errors, ``auto``."""

from __future__ import annotations

import functools
import logging
import math

import pytest
import torch
import torch.nn.functional as F

from vmunet_monai.ops import backends as registry
from vmunet_monai.ops import selective_scan_cpu
from vmunet_monai.ops import selective_scan_fn
from vmunet_monai.ops.selective_scan_torch import selective_scan_torch

# (batch, groups, channels per group, N, L, grouped B/C, use D, use delta_bias, softplus, use z)
CASES = [
    (1, 1, 3, 1, 1, True, False, False, False, False),
    (2, 2, 3, 4, 7, True, True, True, True, False),
    (1, 4, 5, 16, 64, True, True, True, True, False),  # the VM-UNet configuration (4 directions, N=16)
    (2, 2, 2, 4, 130, True, True, False, True, True),
    (1, 1, 4, 4, 130, False, False, True, False, False),  # ungrouped (batch, N, L) B/C
    (2, 4, 2, 16, 7, True, False, True, True, True),
    (1, 2, 9, 1, 64, True, True, True, False, True),
]
CASE_IDS = [f"b{c[0]}-G{c[1]}-D{c[2]}-N{c[3]}-L{c[4]}{'' if c[5] else '-ungrouped'}" for c in CASES]
INPUT_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def _cpu_kernel_or_skip() -> None:
    if not selective_scan_cpu.cpu_kernel_available():
        pytest.skip(f"cpu backend unavailable: {selective_scan_cpu.cpu_kernel_unavailable_reason()}")


def _make_inputs(case, dtype=torch.float64, device="cpu", seed=0):
    batch, groups, d_group, n_state, length, grouped, use_d, use_bias, softplus, use_z = case
    gen = torch.Generator().manual_seed(seed)
    channels = groups * d_group

    def randn(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale + shift).to(device, dtype)

    bc_shape = (batch, groups, n_state, length) if grouped else (batch, n_state, length)
    # without softplus, delta must stay positive for a stable scan: use softplus-like magnitudes directly
    delta = randn(batch, channels, length, scale=0.5, shift=-1.0)
    if not softplus:
        delta = F.softplus(delta)
    tensors = {
        "u": randn(batch, channels, length),
        "delta": delta,
        "A": -torch.exp(randn(channels, n_state, scale=0.5)),
        "B": randn(*bc_shape),
        "C": randn(*bc_shape),
        "D": randn(channels) if use_d else None,
        "z": randn(batch, channels, length) if use_z else None,
        # without softplus a negative delta + bias would make the scan grow without bound
        "delta_bias": (randn(channels, scale=0.3) if softplus else randn(channels, scale=0.3).abs())
        if use_bias
        else None,
    }
    return tensors, softplus


def _run(backend, tensors, softplus, grad_out):
    """Output, last state and the gradients of <out, grad_out> for every tensor input."""
    leaves = {k: (v.detach().clone().requires_grad_() if v is not None else None) for k, v in tensors.items()}
    out, last = selective_scan_fn(
        **leaves, delta_softplus=softplus, return_last_state=True, backend=backend
    )
    names = [k for k in INPUT_NAMES if leaves[k] is not None]
    grads = torch.autograd.grad((out * grad_out.to(out.dtype)).sum(), [leaves[k] for k in names])
    return out.detach(), last.detach(), dict(zip(names, grads))


@functools.lru_cache(maxsize=None)
def _reference(case_index: int):
    """float64 reference results for a case (computed once per test session)."""
    tensors, softplus = _make_inputs(CASES[case_index])
    gen = torch.Generator().manual_seed(1)
    grad_out = torch.randn(tensors["u"].shape, generator=gen, dtype=torch.float64)
    return tensors, softplus, grad_out, _run("reference", tensors, softplus, grad_out)


def _assert_close(name, got, expected, dtype):
    got = got.to(torch.float64)
    if dtype == torch.float64:
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-10, msg=lambda m: f"{name}: {m}")
    else:
        # 1e-4 relative to the tensor's scale (entries near zero carry cancellation error)
        scale = expected.abs().max().clamp_min(1e-6)
        err = (got - expected).abs().max() / scale
        assert err < 1e-4, f"{name}: max error {err:.2e} relative to max |ref| {scale:.3e}"


def _check_backend(backend, case_index, dtype):
    tensors, softplus, grad_out, (ref_out, ref_last, ref_grads) = _reference(case_index)
    cast = {k: (v.to(dtype) if v is not None else None) for k, v in tensors.items()}
    out, last, grads = _run(backend, cast, softplus, grad_out)
    assert out.dtype == dtype and out.shape == ref_out.shape
    assert last.shape == ref_last.shape
    _assert_close("out", out, ref_out, dtype)
    _assert_close("last_state", last, ref_last, dtype)
    assert set(grads) == set(ref_grads)
    for name in grads:
        _assert_close(f"grad {name}", grads[name], ref_grads[name], dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case_index", range(len(CASES)), ids=CASE_IDS)
def test_torch_backend_matches_reference(case_index, dtype):
    _check_backend("torch", case_index, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case_index", range(len(CASES)), ids=CASE_IDS)
def test_cpu_backend_matches_reference(case_index, dtype):
    _cpu_kernel_or_skip()
    _check_backend("cpu", case_index, dtype)


@pytest.mark.parametrize("block", [1, 4, 64])
def test_torch_block_boundaries(block):
    """Block lengths that split L=130 unevenly (and one step per block) give the same answer and gradients."""
    case_index = 3  # L=130 with D, softplus and z
    tensors, softplus, grad_out, (ref_out, _, ref_grads) = _reference(case_index)
    leaves = {k: (v.clone().requires_grad_() if v is not None else None) for k, v in tensors.items()}
    out = selective_scan_torch(**leaves, delta_softplus=softplus, block=block)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-10)
    names = [k for k in INPUT_NAMES if leaves[k] is not None]
    grads = torch.autograd.grad((out * grad_out).sum(), [leaves[k] for k in names])
    for name, g in zip(names, grads):
        torch.testing.assert_close(g, ref_grads[name], rtol=0, atol=1e-10, msg=lambda m: f"grad {name}: {m}")


def test_reference_hand_computed():
    """One channel, N=1, two steps, no softplus: h1 = d1 b1 u1, h2 = e^(d2 a) h1 + d2 b2 u2, y = c h + D u."""
    u = torch.tensor([[[2.0, -1.0]]], dtype=torch.float64)
    delta = torch.tensor([[[0.5, 0.25]]], dtype=torch.float64)
    A = torch.tensor([[-2.0]], dtype=torch.float64)
    B = torch.tensor([[[3.0, 4.0]]], dtype=torch.float64)
    C = torch.tensor([[[1.5, -2.0]]], dtype=torch.float64)
    D = torch.tensor([0.1], dtype=torch.float64)
    h1 = 0.5 * 3.0 * 2.0
    h2 = math.exp(0.25 * -2.0) * h1 + 0.25 * 4.0 * -1.0
    expected = torch.tensor([[[1.5 * h1 + 0.1 * 2.0, -2.0 * h2 + 0.1 * -1.0]]], dtype=torch.float64)
    for backend in ["reference", "torch"] + (["cpu"] if selective_scan_cpu.cpu_kernel_available() else []):
        out, last = selective_scan_fn(u, delta, A, B, C, D=D, return_last_state=True, backend=backend)
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-12, msg=lambda m: f"{backend}: {m}")
        assert abs(last.item() - h2) < 1e-12


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_half_precision_input_keeps_dtype(backend):
    """bfloat16 input runs in float32 and comes back in bfloat16 (mamba_ssm's convention)."""
    if backend == "cpu":
        _cpu_kernel_or_skip()
    tensors, softplus = _make_inputs(CASES[2], dtype=torch.float32)
    ref = selective_scan_fn(**tensors, delta_softplus=softplus, backend="reference")
    half = dict(tensors, u=tensors["u"].bfloat16(), delta=tensors["delta"].bfloat16())
    ref_half = selective_scan_fn(**half, delta_softplus=softplus, backend="reference")
    out = selective_scan_fn(**half, delta_softplus=softplus, backend=backend)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref_half.float(), rtol=1e-2, atol=1e-2)
    assert ref.shape == out.shape


def test_unknown_backend_lists_choices():
    tensors, softplus = _make_inputs(CASES[1])
    expected = r"unknown selective-scan backend 'cuda_fast'; choose one of \[.*'reference'.*'torch'"
    with pytest.raises(ValueError, match=expected):
        selective_scan_fn(**tensors, backend="cuda_fast")


def test_unavailable_backend_says_why():
    tensors, _ = _make_inputs(CASES[1])
    with pytest.raises(RuntimeError, match=r"'mamba_ssm' is not available: .*(CUDA|cuda).*Available here: \["):
        selective_scan_fn(**tensors, backend="mamba_ssm")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"u": torch.zeros(2, 6, 7, 1)}, r"u must be \(batch, channels, L\)"),
        ({"delta": torch.zeros(2, 6, 8)}, r"delta must have u's shape"),
        ({"A": torch.zeros(5, 4)}, r"A must be \(channels=6, N\)"),
        ({"B": torch.zeros(2, 2, 3, 7)}, r"B must be \(batch, G, N, L\).*N=4"),
        ({"C": torch.zeros(2, 4, 4, 7)}, r"C has 4 groups, which does not divide the 6 channels"),
        ({"B": torch.zeros(2, 3, 4, 7), "C": torch.zeros(2, 3, 4, 7)}, None),  # 3 groups of 2: valid
        ({"C": torch.zeros(2, 1, 4, 7)}, r"B and C must have the same number of groups"),
        ({"D": torch.zeros(5)}, r"D must be \(channels=6,\)"),
        ({"delta_bias": torch.zeros(6, 1)}, r"delta_bias must be \(channels=6,\)"),
        ({"z": torch.zeros(2, 6, 6)}, r"z must have u's shape"),
    ],
)
def test_bad_shapes_name_the_argument(change, message):
    tensors, softplus = _make_inputs(CASES[1])  # batch 2, 2 groups x 3 channels, N=4, L=7
    tensors = {**tensors, **{k: v.double() for k, v in change.items()}}
    if message is None:
        assert selective_scan_fn(**tensors, delta_softplus=softplus, backend="torch").shape == (2, 6, 7)
        return
    with pytest.raises(ValueError, match=message):
        selective_scan_fn(**tensors, delta_softplus=softplus, backend="torch")


def test_auto_picks_fastest_cpu_backend_and_logs_once(caplog):
    tensors, softplus = _make_inputs(CASES[1])
    registry._logged_auto_choices.clear()
    expected = "cpu" if selective_scan_cpu.cpu_kernel_available() else "torch"
    with caplog.at_level(logging.INFO, logger="vmunet_monai"):
        out = selective_scan_fn(**tensors, delta_softplus=softplus)
        selective_scan_fn(**tensors, delta_softplus=softplus)
    assert registry.resolve_backend_name("auto", tensors["u"]) == expected
    messages = [r.getMessage() for r in caplog.records if "backend 'auto' uses" in r.getMessage()]
    assert len(messages) == 1 and f"'{expected}'" in messages[0] and "cpu tensors" in messages[0]
    ref = selective_scan_fn(**tensors, delta_softplus=softplus, backend="reference")
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)


def test_auto_falls_back_to_torch_without_c_compiler(monkeypatch, tmp_path):
    """A failing compiler makes 'cpu' unavailable with the compiler's message; 'auto' then uses 'torch'."""
    monkeypatch.setenv("VMUNET_MONAI_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
    monkeypatch.setattr(selective_scan_cpu, "_compiler", lambda: "false")
    selective_scan_cpu._load_library.cache_clear()
    try:
        x = torch.zeros(1, 2, 3)
        assert not selective_scan_cpu.cpu_kernel_available(x)
        assert "compiling the C kernel failed" in selective_scan_cpu.cpu_kernel_unavailable_reason(x)
        assert registry.resolve_backend_name("auto", x) == "torch"
        with pytest.raises(RuntimeError, match="'cpu' is not available: compiling the C kernel failed"):
            registry.resolve_backend_name("cpu", x)
    finally:
        selective_scan_cpu._load_library.cache_clear()


def test_register_backend_by_name_with_availability_check():
    calls = []

    def fake_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False):
        calls.append(u.shape)
        return torch.zeros_like(u)

    registry.register_backend("test_fake", fake_scan, is_available=lambda x: x.dtype == torch.float64)
    try:
        tensors, _ = _make_inputs(CASES[1])
        assert "test_fake" in registry.list_backends()
        assert selective_scan_fn(**tensors, backend="test_fake").abs().sum() == 0 and calls
        # no priority for cpu: auto never picks it
        assert registry.resolve_backend_name("auto", tensors["u"]) != "test_fake"
        with pytest.raises(RuntimeError, match="'test_fake' is not available"):
            as_float32 = {k: (v.float() if v is not None else None) for k, v in tensors.items()}
            selective_scan_fn(**as_float32, backend="test_fake")
        registry.register_backend("test_fused", None, is_available=lambda x: True, fused_core=lambda *a: None)
        with pytest.raises(ValueError, match="fuses the whole SS2D core"):
            selective_scan_fn(**tensors, backend="test_fused")
    finally:
        registry._REGISTRY.pop("test_fake", None)
        registry._REGISTRY.pop("test_fused", None)
    with pytest.raises(ValueError, match="reserved"):
        registry.register_backend("auto", fake_scan, is_available=lambda x: True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_torch_and_mamba_ssm_agree_on_cuda(dtype):
    from vmunet_monai.ops.selective_scan_mamba import mamba_ssm_available, unavailable_reason

    x = torch.zeros(1, device="cuda")
    if not mamba_ssm_available(x):
        pytest.skip(f"mamba_ssm unavailable: {unavailable_reason(x)}")
    case = (2, 4, 16, 16, 256, True, True, True, True, False)
    tensors, softplus = _make_inputs(case, dtype=torch.float32, device="cuda")
    # mamba_ssm wants variable B/C in the input's dtype (half-precision runs pass bf16 u, delta, B and C)
    tensors = dict(tensors, **{k: tensors[k].to(dtype) for k in ("u", "delta", "B", "C")})
    grad_out = torch.randn(tensors["u"].shape, device="cuda")
    out_m, last_m, grads_m = _run("mamba_ssm", tensors, softplus, grad_out)
    out_t, last_t, grads_t = _run("torch", tensors, softplus, grad_out)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    for name, a, b in [("out", out_t, out_m), ("last_state", last_t, last_m)] + [
        (f"grad {k}", grads_t[k], grads_m[k]) for k in grads_m
    ]:
        err = (a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-6)
        assert err < tol, f"{name}: torch vs mamba_ssm relative error {err:.2e}"


def test_torch_backend_accepts_time_major_views():
    """Time-major inputs (transposed views) give the same numbers and gradients, and a time-major output."""
    tensors, softplus, grad_out, (ref_out, _, ref_grads) = _reference(2)  # G=4, N=16, L=64, D and bias
    time_major = dict(tensors)
    for name in ("u", "delta"):
        time_major[name] = tensors[name].transpose(1, 2).contiguous().requires_grad_()
    for name in ("B", "C"):
        time_major[name] = tensors[name].permute(0, 3, 1, 2).contiguous().requires_grad_()
    views = dict(time_major)
    views["u"], views["delta"] = time_major["u"].transpose(1, 2), time_major["delta"].transpose(1, 2)
    views["B"], views["C"] = time_major["B"].permute(0, 2, 3, 1), time_major["C"].permute(0, 2, 3, 1)
    out = selective_scan_fn(**views, delta_softplus=softplus, backend="torch")
    assert out.transpose(1, 2).is_contiguous() and not out.is_contiguous()
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-10)
    g_u, g_B = torch.autograd.grad((out * grad_out).sum(), [time_major["u"], time_major["B"]])
    torch.testing.assert_close(g_u.transpose(1, 2), ref_grads["u"], rtol=0, atol=1e-10)
    torch.testing.assert_close(g_B.permute(0, 2, 3, 1), ref_grads["B"], rtol=0, atol=1e-10)


def test_cpu_backend_in_forked_child():
    """The kernel's thread pool is rebuilt in a forked process (DataLoader workers), instead of hanging."""
    _cpu_kernel_or_skip()
    import multiprocessing as mp

    tensors, softplus = _make_inputs(CASES[2], dtype=torch.float32)
    expected = selective_scan_fn(**tensors, delta_softplus=softplus, backend="cpu")  # the parent's pool exists now
    ctx = mp.get_context("fork")
    with ctx.Pool(1) as pool:
        out = pool.apply_async(_scan_in_child, (tensors, softplus)).get(timeout=120)
    torch.testing.assert_close(out, expected)


def _scan_in_child(tensors, softplus):
    torch.set_num_threads(2)
    return selective_scan_fn(**tensors, delta_softplus=softplus, backend="cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_torch_backend_on_cuda_matches_reference(dtype):
    """The torch backend on CUDA (long blocks, kernel launches per step) against the CPU float64 reference."""
    tensors, softplus, grad_out, (ref_out, ref_last, ref_grads) = _reference(3)  # batch 2, L=130, D, z
    cuda = {k: (v.to("cuda", dtype) if v is not None else None) for k, v in tensors.items()}
    out, last, grads = _run("torch", cuda, softplus, grad_out.cuda())
    _assert_close("out", out.cpu(), ref_out, dtype)
    _assert_close("last_state", last.cpu(), ref_last, dtype)
    for name in grads:
        _assert_close(f"grad {name}", grads[name].cpu(), ref_grads[name], dtype)

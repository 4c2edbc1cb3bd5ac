"""The ``triton`` backend: fused SS2D cross-scan + selective scan + cross-merge, forward and backward.

Ground truth is a plain-torch SS2D written here from the published maths (flips/transposes for the cross
scan, einsums, a sequential recurrence, flips/transposes for the merge). Without CUDA the kernels run in
the Triton interpreter (``TRITON_INTERPRET=1``, set below before the kernels are imported) on tiny
shapes; with CUDA the same tests run on the GPU with larger shapes, odd sizes and batch 1.
"""

from __future__ import annotations

import os
import re
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

CUDA = torch.cuda.is_available()
if not CUDA:
    # must be set before the triton kernels are decorated (they are imported lazily on first use)
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton", reason="triton is not installed")

from vmunet_monai.ops import ss2d_triton as st  # noqa: E402

DEVICE = "cuda" if CUDA else "cpu"

# Interpreter configs use tiny tiles so that several chunks, several saved segments and a partly
# masked last chunk / channel block are exercised on tiny shapes.
SMALL_CFG = st.ScanConfig(fwd_block_l=4, fwd_block_d=4, fwd_warps=1, bwd_block_l=2, bwd_block_d=4, bwd_warps=1,
                          seg_len=8)
# fewer, larger tiles where the tiling itself is not under test (the interpreter's cost is per tile)
MID_CFG = st.ScanConfig(fwd_block_l=16, fwd_block_d=8, fwd_warps=1, bwd_block_l=16, bwd_block_d=8, bwd_warps=1,
                        seg_len=16)


@pytest.fixture(autouse=True)
def _restore_config():
    before = st.get_config()
    yield
    st.set_config(before)


# ------------------------------------------------------------------------------------------------
# plain-torch reference (published forward_corev0 maths)
# ------------------------------------------------------------------------------------------------


def cross_scan_ref(x: torch.Tensor) -> torch.Tensor:
    """(B, D, H, W) -> (B, 4, D, L) with materialised flips/transposes."""
    b, d, h, w = x.shape
    x0 = x.reshape(b, d, h * w)
    x1 = x.transpose(2, 3).reshape(b, d, h * w)
    return torch.stack([x0, x1, x0.flip(-1), x1.flip(-1)], dim=1)


def selective_scan_ref(u, delta, A, Bs, Cs, Ds, bias, softplus=True):
    """Sequential recurrence; u/delta (B, G*D, L), Bs/Cs (B, G, N, L)."""
    g = Bs.shape[1]
    dm = u.shape[1] // g
    delta = delta + bias[None, :, None] if bias is not None else delta
    delta = F.softplus(delta) if softplus else delta
    bx = Bs.repeat_interleave(dm, dim=1)
    cx = Cs.repeat_interleave(dm, dim=1)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[2]):
        h = torch.exp(delta[:, :, t, None] * A) * h + (delta[:, :, t] * u[:, :, t])[..., None] * bx[..., t]
        ys.append((h * cx[..., t]).sum(-1))
    y = torch.stack(ys, -1)
    return y + Ds[None, :, None] * u if Ds is not None else y, h


def ss2d_ref(x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds):
    """(B, H, W, D) -> (B, H, W, D), the published SS2D core in fp32."""
    b, h, w, d = x.shape
    length = h * w
    r = dt_projs_weight.shape[2]
    n = A_logs.shape[1]
    xs = cross_scan_ref(x.permute(0, 3, 1, 2).float())
    x_dbl = torch.einsum("bkdl,kcd->bkcl", xs, x_proj_weight.float())
    dts, bs, cs = torch.split(x_dbl, [r, n, n], dim=2)
    dts = torch.einsum("bkrl,kdr->bkdl", dts, dt_projs_weight.float())
    out, _ = selective_scan_ref(xs.reshape(b, 4 * d, length), dts.reshape(b, 4 * d, length),
                                -torch.exp(A_logs.float()), bs, cs, Ds.float(), dt_projs_bias.float().reshape(-1))
    out = out.view(b, 4, d, length)
    inv = out[:, 2:].flip(-1)
    wh = out[:, 1].view(b, d, w, h).transpose(2, 3).reshape(b, d, length)
    invwh = inv[:, 1].view(b, d, w, h).transpose(2, 3).reshape(b, d, length)
    y = out[:, 0] + inv[:, 0] + wh + invwh
    return y.transpose(1, 2).reshape(b, h, w, d)


def make_params(d: int, n: int, r: int, seed: int = 0):
    """SS2D parameters with the published inits (plus noise on A_logs/Ds so every channel differs)."""
    g = torch.Generator().manual_seed(seed)
    k = 4
    x_proj_weight = (torch.rand(k, r + 2 * n, d, generator=g) * 2 - 1) / d ** 0.5
    dt_projs_weight = (torch.rand(k, d, r, generator=g) * 2 - 1) * r ** -0.5
    lo, hi = torch.log(torch.tensor(1e-3)), torch.log(torch.tensor(0.1))
    dt = torch.exp(torch.rand(k, d, generator=g) * (hi - lo) + lo).clamp(min=1e-4)
    dt_projs_bias = dt + torch.log(-torch.expm1(-dt))
    A_logs = torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(k * d, 1) + 0.1 * torch.randn(
        k * d, n, generator=g)
    Ds = 1 + 0.1 * torch.randn(k * d, generator=g)
    return [p.to(DEVICE).requires_grad_() for p in (x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds)]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12)).item()


NAMES = ["x", "x_proj_weight", "dt_projs_weight", "dt_projs_bias", "A_logs", "Ds"]

if CUDA:
    # (B, H, W, D, N, R): odd sizes, non-square, batch 1, a VM-UNet stage shape at 224 (7x7)
    SS2D_CASES = [(1, 3, 5, 32, 16, 2), (2, 7, 7, 96, 16, 6), (1, 13, 9, 64, 16, 4), (2, 16, 16, 192, 16, 12),
                  (1, 28, 28, 48, 16, 3)]
else:
    # the first case runs with tiny tiles (several chunks, segments, masked tails), the second with one tile
    SS2D_CASES = [(1, 3, 5, 6, 4, 2), (2, 4, 3, 4, 2, 1)]


@pytest.mark.parametrize("bwd_seq", [0, 1])
@pytest.mark.parametrize("b,h,w,d,n,r", SS2D_CASES)
def test_ss2d_forward_and_gradients_match_reference(b, h, w, d, n, r, bwd_seq):
    """Both kernel pairs against the reference: tile forward + tile backward, sequential forward + sequential
    backward (the forwards fwd_seq=2 picks between are both forced here: these shapes are small)."""
    st.set_config(SMALL_CFG if b == 1 else MID_CFG if not CUDA else st.ScanConfig(), bwd_seq=bwd_seq, fwd_seq=bwd_seq,
                  **({} if CUDA else {"fwd_seq_block_d": 4}))  # CUDA: the default sequential tiles
    torch.manual_seed(0)
    params = make_params(d, n, r)
    x = torch.randn(b, h, w, d, device=DEVICE, requires_grad=True)
    y = st.ss2d_scan_triton(x, *params)
    assert y.shape == (b, h, w, d) and y.dtype == torch.float32
    y_ref = ss2d_ref(x, *params)
    assert rel_err(y, y_ref) < 1e-4
    grad_out = torch.randn_like(y_ref)
    grads = torch.autograd.grad(y, [x, *params], grad_out)
    grads_ref = torch.autograd.grad(y_ref, [x, *params], grad_out)
    for name, got, want in zip(NAMES, grads, grads_ref):
        assert got.shape == want.shape, name
        assert rel_err(got, want) < 1e-4, f"gradient of {name}: relative error {rel_err(got, want):.2e}"


@pytest.mark.parametrize("bwd_seq", [0, 1])
def test_selective_scan_matches_reference_layouts_and_options(bwd_seq):
    """The plain selective scan (mamba_ssm layout): groups, no softplus, no D, 3-dim B/C, last state; both
    backward kernels (tile, sequential)."""
    st.set_config(MID_CFG if not CUDA else st.ScanConfig(), bwd_seq=bwd_seq)
    torch.manual_seed(1)
    b, g, dm, n, length = (2, 2, 6, 4, 11) if not CUDA else (2, 4, 64, 16, 301)
    u = torch.randn(b, g * dm, length, device=DEVICE, requires_grad=True)
    delta = (0.5 * torch.randn(b, g * dm, length, device=DEVICE)).requires_grad_()
    A = (-torch.rand(g * dm, n, device=DEVICE) - 0.1).requires_grad_()
    Bm = torch.randn(b, g, n, length, device=DEVICE, requires_grad=True)
    Cm = torch.randn(b, g, n, length, device=DEVICE, requires_grad=True)
    D = torch.randn(g * dm, device=DEVICE, requires_grad=True)
    bias = (0.1 * torch.randn(g * dm, device=DEVICE)).requires_grad_()
    inputs = [u, delta, A, Bm, Cm, D, bias]

    y, last = st.selective_scan_triton(u, delta, A, Bm, Cm, D, delta_bias=bias, delta_softplus=True,
                                       return_last_state=True)
    y_ref, last_ref = selective_scan_ref(u, delta, A, Bm, Cm, D, bias, softplus=True)
    assert rel_err(y, y_ref) < 1e-4 and rel_err(last, last_ref) < 1e-4
    go = torch.randn_like(y)
    for name, got, want in zip("u delta A B C D bias".split(), torch.autograd.grad(y, inputs, go),
                               torch.autograd.grad(y_ref, inputs, go)):
        assert rel_err(got, want) < 1e-4, name

    # through the public registry entry point
    from vmunet_monai.ops import selective_scan_fn

    y_reg = selective_scan_fn(u, delta, A, Bm, Cm, D, delta_bias=bias, delta_softplus=True, backend="triton")
    assert torch.equal(y_reg, y)

    # no softplus, no D, no bias, one group given as 3-dim B/C; delta must stay positive without softplus
    dpos = delta.detach().abs()
    y2 = st.selective_scan_triton(u, dpos, A, Bm[:, 0], Cm[:, 0])
    y2_ref, _ = selective_scan_ref(u, dpos, A, Bm[:, :1], Cm[:, :1], None, None, softplus=False)
    assert rel_err(y2, y2_ref) < 1e-4


def test_low_precision_inputs_keep_fp32_state():
    """bf16 activations: the output stays fp32 and close to the fp32 reference on the bf16-rounded input."""
    if not CUDA:
        st.set_config(MID_CFG)
    torch.manual_seed(2)
    b, h, w, d, n, r = (1, 3, 5, 6, 4, 2) if not CUDA else (2, 14, 14, 192, 16, 12)
    params = make_params(d, n, r)
    x = torch.randn(b, h, w, d, device=DEVICE).to(torch.bfloat16).requires_grad_()
    y = st.ss2d_scan_triton(x, *params)
    assert y.dtype == torch.float32
    y_ref = ss2d_ref(x.float(), *params)
    # the projections run in bf16 (as under autocast): bf16-level agreement, not fp32-level
    assert rel_err(y, y_ref) < 3e-2
    (gx,) = torch.autograd.grad(y.sum(), [x])
    assert gx.dtype == torch.bfloat16 and torch.isfinite(gx.float()).all()


def _core_under_configs(x, params, configs):
    """[y, *grads of x and the five parameters] of ``ss2d_scan_triton`` under each ScanConfig override dict (the
    interpreter's MID_CFG or the defaults as the base)."""
    results = []
    for overrides in configs:
        st.set_config(MID_CFG if not CUDA else st.ScanConfig(), **overrides)
        y = st.ss2d_scan_triton(x, *params)
        results.append([y.detach(), *torch.autograd.grad(y.square().sum(), [x, *params])])
    return results


def test_upcast_16bit_changes_nothing():
    """Handing the kernels fp32 copies of bf16 activations (upcast_16bit=1, default) or the bf16 tensors
    themselves gives the same output and gradients: the kernels compute in fp32 either way."""
    torch.manual_seed(5)
    b, h, w, d, n, r = (1, 3, 5, 6, 4, 2) if not CUDA else (2, 14, 14, 192, 16, 12)
    params = make_params(d, n, r)
    x = torch.randn(b, h, w, d, device=DEVICE).to(torch.bfloat16).requires_grad_()
    results = _core_under_configs(x, params, [dict(upcast_16bit=0), dict(upcast_16bit=1)])
    # 16-bit rows are not handed to the Gluon kernels (their asynchronous copies cannot read them): no compile failure
    # that would turn the Gluon kernels off for the fp32 rows after
    assert not st._GLUON_FAILED[0] and not st._GLUON_FWD_FAILED[0]
    for name, a, c in zip(["y"] + NAMES, *results):
        assert a.dtype == c.dtype, name
        # gradients that pass through 16-bit partials (or, without upcast, a bf16 ddelta) differ by bf16 rounding
        assert rel_err(a, c) < (1e-6 if name in ("y", "A_logs", "Ds") else 2e-2), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_softplus_outside_the_scan_changes_nothing(dtype):
    """softplus(delta + dt_bias) in its own elementwise kernel (pre_softplus=1, default; its chain rule after the
    backward) or in the scan kernels at every step (pre_softplus=0): same output and gradients."""
    torch.manual_seed(6)
    b, h, w, d, n, r = (1, 3, 5, 6, 4, 2) if not CUDA else (2, 14, 14, 192, 16, 12)
    params = make_params(d, n, r)
    # raise a few dt biases above softplus' threshold (20) so that its identity branch is exercised too
    with torch.no_grad():
        params[2][0, :2] = 25.0
    x = torch.randn(b, h, w, d, device=DEVICE).to(dtype).requires_grad_()
    # the GEMM dt projection in both (its fused form has a test of its own)
    results = _core_under_configs(x, params, [dict(pre_softplus=0, fused_dt=0), dict(pre_softplus=1, fused_dt=0)])
    for name, a, c in zip(["y"] + NAMES, *results):
        assert a.dtype == c.dtype, name
        # bf16: ddelta is stored in bf16 before (pre_softplus=1) or after (0) the softplus factor
        assert rel_err(a, c) < (1e-6 if dtype == torch.float32 or name in ("y", "A_logs", "Ds") else 2e-2), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_dt_projection_changes_nothing(dtype):
    """The dt projection's backward in one Triton kernel reading x_dbl (fused_dt=1, default; with bf16 activations its
    forward too) or as the softplus gradient kernel + batched GEMMs (fused_dt=0): same output and gradients. Odd D and an R that is not a power
    of two exercise the masked tiles; D > the backward's 32-channel blocks its loop over channel blocks."""
    torch.manual_seed(7)
    b, h, w, d, n, r = (1, 3, 5, 40, 4, 3) if not CUDA else (2, 14, 14, 200, 16, 6)
    params = make_params(d, n, r)
    with torch.no_grad():
        params[2][1, :3] = 25.0  # softplus' identity branch
    x = torch.randn(b, h, w, d, device=DEVICE).to(dtype).requires_grad_()
    results = _core_under_configs(x, params, [dict(fused_dt=0), dict(fused_dt=1)])
    for name, a, c in zip(["y"] + NAMES, *results):
        assert a.dtype == c.dtype, name
        # bf16: the GEMM path rounds ddts / d dt_w and ddelta * softplus' to bf16
        tol = 1e-5 if dtype == torch.float32 else (1e-7 if name == "y" else 2e-2)  # same forward: same y
        assert rel_err(a, c) < tol, name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dt_forward_kernel_matches_gemm_and_softplus(dtype):
    """The fused dt forward (``dt_softplus_fwd_kernel``, the default for 16-bit activations) against the batched GEMM +
    softplus kernel it replaces and against float64 with z rounded to nearest in bf16 as the autocast GEMM returns it:
    M not a multiple of the 64-row tiles, 70 channels (a masked tile), ranks padded to 16 and 32, softplus' identity
    branch (bias 30)."""
    torch.manual_seed(14)
    bsz, length, k, n, dm = 2, 37, 4, 3, 70
    for r in (6, 20):
        c = r + 2 * n
        x_dbl = torch.randn(bsz, length, k, c, device=DEVICE).to(dtype)
        dt_w = torch.randn(k, dm, r, device=DEVICE) * r ** -0.5
        bias = torch.randn(k * dm, device=DEVICE) - 2.0
        bias[:5] = 30.0
        got = st._dt_softplus_forward(x_dbl, dt_w, bias, r)
        assert got.shape == (k, bsz, length, dm) and got.dtype == torch.float32
        gemm = st._softplus_delta(st._ss2d_delta(x_dbl, dt_w, r)[1], bias)
        z = torch.einsum("kblr,kdr->kbld", x_dbl[..., :r].permute(2, 0, 1, 3).double(), dt_w.to(dtype).double())
        if dtype != torch.float32:
            z = z.float().to(dtype).double()
        ref = F.softplus(z + bias.double().view(k, 1, 1, dm), threshold=20.0)
        if dtype == torch.float32:
            assert rel_err(got, gemm) < 1e-6 and rel_err(got, ref) < 1e-6
        else:
            # same rounding of z as the GEMM: equal but where an fp32 sum in another order lands on the other side of a
            # bf16 rounding boundary (one bf16 step of z: ~0.4% of delta there)
            assert (got == gemm).float().mean() > 0.999
            assert rel_err(got, ref) < 1e-3


@pytest.mark.parametrize("min_programs", [0, 10 ** 6])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dt_backward_kernel_matches_torch(dtype, min_programs, monkeypatch):
    """The dt backward kernel alone against torch autograd in float64 through softplus(dts @ dt_w^T + bias): ddts,
    d dt_w, d bias; M not a multiple of the row blocks, ranks padded to 16 and to 32 (different tiles). bf16
    activations (and a bf16 ddelta, as the scan hands it back under autocast) take TF32 tensor-core products: the
    reference is then float64 on the same bf16 values, with z rounded to bf16 as the autocast GEMM returns it. With
    a large ``_DT_MIN_PROGRAMS`` the channels are split over programs (70 channels: 32 + 32 + 6) and ddts is summed
    from their partials."""
    monkeypatch.setattr(st, "_DT_MIN_PROGRAMS", min_programs)
    torch.manual_seed(8)
    bsz, length, k, n, dm = 2, 37, 4, 3, 70
    assert st._dt_tiles(6, bsz * length, dm, k, st._dot_precision(dtype))[4] == (1 if min_programs == 0 else 3)
    assert st._dot_precision(dtype) == ("ieee" if dtype == torch.float32 else "tf32")
    for r in (6, 20):
        c = r + 2 * n
        x_dbl = torch.randn(bsz, length, k, c, device=DEVICE).to(dtype)
        dt_w = torch.randn(k, dm, r, device=DEVICE) * r ** -0.5
        bias = torch.randn(k * dm, device=DEVICE) - 2.0
        bias[:5] = 30.0  # softplus' identity branch
        g = torch.randn(k, bsz, length, dm, device=DEVICE).to(dtype)
        dx, d_w, d_b = st._dt_softplus_backward(g, x_dbl, dt_w, bias, r)
        x64 = x_dbl.double().requires_grad_()
        w64 = dt_w.to(dtype).double().requires_grad_()
        b64 = bias.double().requires_grad_()
        dts = x64[..., :r].permute(2, 0, 1, 3)  # (K, B, L, R)
        z = torch.einsum("kblr,kdr->kbld", dts, w64)
        if dtype != torch.float32:  # the forward's GEMM output in bf16 (a rounding, not differentiated)
            z = z + (z.to(dtype).double() - z).detach()
        ref = F.softplus(z + b64.view(k, 1, 1, dm))
        ref_dx, ref_dw, ref_db = torch.autograd.grad(ref, [x64, w64, b64], g.double())
        # bf16: TF32 rounds the gradient factor to 11 bits; the interpreter also truncates z to bf16 where the GPU
        # rounds it to nearest (as the reference does), which moves softplus' by up to 2^-8 relative
        tol = 1e-6 if dtype == torch.float32 else (2e-3 if CUDA else 5e-3)
        assert rel_err(dx[..., :r], ref_dx[..., :r]) < tol
        assert rel_err(d_w, ref_dw) < tol
        assert rel_err(d_b, ref_db) < tol


def test_backward_is_deterministic():
    if not CUDA:
        st.set_config(MID_CFG)
    torch.manual_seed(3)
    b, h, w, d, n, r = (1, 3, 4, 8, 4, 2) if not CUDA else (2, 32, 32, 384, 16, 24)
    params = make_params(d, n, r)
    x = torch.randn(b, h, w, d, device=DEVICE, requires_grad=True)
    go = torch.randn(b, h, w, d, device=DEVICE)
    first = torch.autograd.grad(st.ss2d_scan_triton(x, *params), [x, *params], go)
    second = torch.autograd.grad(st.ss2d_scan_triton(x, *params), [x, *params], go)
    for name, a, c in zip(NAMES, first, second):
        assert torch.equal(a, c), f"gradient of {name} differs between two identical runs"


def test_segment_length_changes_nothing():
    """Saving the state every 2 vs every 8 steps (backward recomputation) gives the same gradients."""
    torch.manual_seed(4)
    b, h, w, d, n, r = (1, 3, 5, 4, 2, 1) if not CUDA else (1, 16, 16, 64, 16, 4)
    params = make_params(d, n, r)
    x = torch.randn(b, h, w, d, device=DEVICE, requires_grad=True)
    results = []
    for cfg in ((4, 4, 4), (8, 4, 16)) if not CUDA else ((16, 16, 16), (32, 16, 128)):
        st.set_config(fwd_block_l=cfg[0], bwd_block_l=cfg[1], seg_len=cfg[2], fwd_block_d=4 if not CUDA else 16,
                      bwd_block_d=4 if not CUDA else 16)
        y = st.ss2d_scan_triton(x, *params)
        results.append([y.detach(), *torch.autograd.grad(y.square().sum(), [x, *params])])
    for name, a, c in zip(["y"] + NAMES, *results):
        assert rel_err(a, c) < 1e-5, name


def test_reverse_scan_fallback_matches():
    """bwd_rev_flip=1 (flip / scan / flip instead of a reverse scan) gives the same gradients."""
    torch.manual_seed(6)
    b, h, w, d, n, r = (1, 3, 4, 4, 2, 1) if not CUDA else (2, 13, 9, 64, 16, 4)
    params = make_params(d, n, r)
    x = torch.randn(b, h, w, d, device=DEVICE, requires_grad=True)
    results = []
    for flip in (0, 1):
        # the flag belongs to the tile backward kernel
        st.set_config(MID_CFG if not CUDA else st.ScanConfig(bwd_block_l=8, bwd_warps=4), bwd_rev_flip=flip, bwd_seq=0)
        y = st.ss2d_scan_triton(x, *params)
        results.append(torch.autograd.grad(y.square().sum(), [x, *params]))
    for name, a, c in zip(NAMES, *results):
        assert rel_err(a, c) < 1e-5, name


@pytest.mark.parametrize("bwd_seq", [0, 1])
def test_backward_with_vanishing_decays_matches_reference(bwd_seq):
    """Large time steps make exp(delta A) underflow to 0 (the state forgets everything each step): the
    dA gradient is then tiny and must not pick up rounding noise (on the GPU, forming exp(delta_t A) h_{t-1}
    as h_t - delta_t B_t u_t failed this at 8e-4; the interpreter's numpy arithmetic does not show it)."""
    st.set_config(SMALL_CFG if not CUDA else st.ScanConfig(), bwd_seq=bwd_seq)
    torch.manual_seed(10)
    b, h, w, d, n, r = (1, 3, 5, 6, 4, 2) if not CUDA else (2, 16, 16, 64, 16, 4)
    params = make_params(d, n, r)
    with torch.no_grad():
        # delta = softplus(bias + ...) from about 0.01 to 30: decays exp(delta A) from ~1 down to exp(-500)
        params[2].copy_(torch.linspace(-4.0, 30.0, params[2].numel()).view_as(params[2]))
    x = torch.randn(b, h, w, d, device=DEVICE, requires_grad=True)
    y = st.ss2d_scan_triton(x, *params)
    y_ref = ss2d_ref(x, *params)
    assert rel_err(y, y_ref) < 1e-4
    go = torch.randn_like(y_ref)
    for name, got, want in zip(NAMES, torch.autograd.grad(y, [x, *params], go),
                               torch.autograd.grad(y_ref, [x, *params], go)):
        assert rel_err(got, want) < 1e-4, f"gradient of {name}: relative error {rel_err(got, want):.2e}"


@pytest.mark.parametrize("seg_len,bwd_block_l,maxnreg", [(8, 2, 0), (4, 4, 0), (16, 8, 0), (8, 4, 168),
                                                       (16, 16, 0)])
def test_sequential_backward_matches_reference(seg_len, bwd_block_l, maxnreg):
    """bwd_seq=1 (one time step per iteration, states of a sub-segment in scratch) against the reference:
    several segments and sub-segments with a partial last one, no recomputation pass (seg_len == bwd_block_l; on
    the GPU also with 64-step sub-segments),
    two sub-segments per segment (the recomputation pass stops before the last one), a register cap (``maxnreg``,
    compiled on the GPU), a masked channel block (the plain selective scan:
    test_selective_scan_matches_reference_layouts_and_options)."""
    torch.manual_seed(11)
    b, h, w, d, n, r = (1, 3, 5, 6, 4, 2) if not CUDA else (2, 19, 23, 96, 16, 6)
    scale = 1 if not CUDA else 4  # longer sequences on the GPU: the same segment / sub-segment structure
    seg, sub = seg_len * scale, bwd_block_l * scale
    st.set_config(st.ScanConfig(fwd_block_l=min(seg, 4 * scale), fwd_block_d=4 if not CUDA else 16,
                                fwd_warps=1 if not CUDA else 4, bwd_block_l=sub, bwd_block_d=4 if not CUDA else 32,
                                bwd_warps=1, seg_len=seg, bwd_seq=1, bwd_maxnreg=maxnreg))
    params = make_params(d, n, r)
    x = torch.randn(b, h, w, d, device=DEVICE, requires_grad=True)
    y = st.ss2d_scan_triton(x, *params)
    y_ref = ss2d_ref(x, *params)
    go = torch.randn_like(y_ref)
    for name, got, want in zip(NAMES, torch.autograd.grad(y, [x, *params], go),
                               torch.autograd.grad(y_ref, [x, *params], go)):
        assert rel_err(got, want) < 1e-4, f"gradient of {name}: relative error {rel_err(got, want):.2e}"


def assert_gradients_match_reference(x, params, backward_kernel: str) -> None:
    """The fused core's gradients (for a random output gradient) against the reference's, within 1e-4 relative, and
    the name of the backward kernel that ran."""
    y = st.ss2d_scan_triton(x, *params)
    y_ref = ss2d_ref(x, *params)
    go = torch.randn_like(y_ref)
    got_grads = torch.autograd.grad(y, [x, *params], go)
    assert st._LAST_BWD_KERNEL[0] == backward_kernel
    for name, got, want in zip(NAMES, got_grads, torch.autograd.grad(y_ref, [x, *params], go)):
        assert rel_err(got, want) < 1e-4, f"gradient of {name}: relative error {rel_err(got, want):.2e}"


@pytest.mark.skipif(not CUDA, reason="Gluon kernels compile for a GPU only (no interpreter)")
@pytest.mark.parametrize("seg_len,bwd_block_l,maxnreg,hist_smem", [(64, 64, 0, 0), (32, 8, 0, 0), (128, 16, 168, 0),
                                                                   (32, 8, 0, 1), (128, 8, 168, 1), (16, 16, 0, 1),
                                                                   (64, 64, 0, 1)])
def test_gluon_backward_matches_reference(seg_len, bwd_block_l, maxnreg, hist_smem):
    """bwd_gluon=1 (the Gluon sequential backward) against the reference, batch 1 and 2, odd H x W, a masked channel
    block (70 = 32 + 32 + 6): one sub-segment per segment, several with the recomputation pass, a register cap; the
    h_{t-1} history in global scratch and in shared memory (not for 64-step sub-segments: ``_HIST_SMEM_MAX_STEPS``)."""
    if st._kernels()["bwd_seq_gluon"] is None:
        pytest.skip("this Triton has no triton.experimental.gluon")
    for b, h, w, d in ((1, 9, 13, 70), (2, 19, 23, 96)):
        torch.manual_seed(12)
        st.set_config(st.ScanConfig(bwd_block_l=bwd_block_l, seg_len=seg_len, bwd_maxnreg=maxnreg, bwd_gluon=1,
                                    bwd_hist_smem=hist_smem))
        params = make_params(d, 16, 6)
        x = torch.randn(b, h, w, d, device=DEVICE, requires_grad=True)
        assert_gradients_match_reference(x, params, "bwd_seq_gluon_kernel")
        history_bytes = bwd_block_l * 16 * 32 * 4  # h_{t-1} of a sub-segment: fp32, 16 states x 32 channels
        assert (st.kernel_info()["bwd"]["shared"] >= history_bytes) == bool(hist_smem and bwd_block_l <= 32)


def test_gluon_row_arguments_start_at_16_byte_boundaries():
    """The Gluon kernels get x_dbl's B / C rows as a 16-byte aligned view with the same strides plus the element offset
    back to the rows (the kernel adds it as a constant, so the compiler can prove the copies' alignment); the Triton
    kernels get the views unchanged."""
    cases = ((torch.float32, 6, 16), (torch.float32, 12, 16), (torch.bfloat16, 6, 16), (torch.float32, 2, 4))
    for dtype, r, n in cases:
        x_dbl = torch.zeros(2, 5, 4, r + 2 * n, dtype=dtype)
        b4, c4 = x_dbl[..., r:r + n].permute(0, 2, 1, 3), x_dbl[..., r + n:].permute(0, 2, 1, 3)
        b_rows, c_rows, kw = st._gluon_row_args(True, b4, c4)
        size = x_dbl.element_size()
        for view, rows, off in ((b4, b_rows, kw["B_OFF"]), (c4, c_rows, kw["C_OFF"])):
            assert rows.data_ptr() % 16 == 0 and rows.data_ptr() + off * size == view.data_ptr()
            assert rows.stride() == view.stride() and rows.shape == view.shape and 0 <= off < 16 // size
        assert kw["B_OFF"] == (x_dbl.data_ptr() + r * size) % 16 // size
    b_same, c_same, kw = st._gluon_row_args(False, b4, c4)
    assert b_same is b4 and c_same is c4 and kw == {}


def test_gluon_backward_only_where_it_applies(monkeypatch):
    """bwd_gluon=1 picks the Gluon backward only for the path it covers (pre-softplus delta without a bias in the
    kernel, the cross scan, 16 states, 32-channel one-warp programs) and when it is importable; in the interpreter,
    which does not run Gluon, it is not offered."""
    cfg = st.ScanConfig(bwd_gluon=1)
    monkeypatch.setitem(st._kernels(), "bwd_seq_gluon", object())  # as where Gluon imports
    assert st._use_gluon_backward(cfg, False, False, True, 16)
    assert not st._use_gluon_backward(replace(cfg, bwd_gluon=0), False, False, True, 16)
    assert not st._use_gluon_backward(cfg, True, True, True, 16)  # softplus + bias in the kernel (pre_softplus=0)
    assert not st._use_gluon_backward(cfg, False, False, False, 16)  # the plain selective scan
    assert not st._use_gluon_backward(cfg, False, False, True, 8)  # d_state 8
    assert not st._use_gluon_backward(cfg, False, False, True, 16, fp32_inputs=False)  # bf16 rows (upcast_16bit=0)
    assert not st._use_gluon_backward(replace(cfg, bwd_block_d=16), False, False, True, 16)
    assert not st._use_gluon_backward(replace(cfg, bwd_seq=0), False, False, True, 16)
    assert not st._use_gluon_backward(replace(cfg, seq_stages=1), False, False, True, 16)  # no ring to fill ahead
    monkeypatch.setitem(st._kernels(), "bwd_seq_gluon", None)  # Triton without Gluon
    assert not st._use_gluon_backward(cfg, False, False, True, 16)
    monkeypatch.undo()
    if not CUDA:
        assert st._kernels()["bwd_seq_gluon"] is None  # the interpreter does not run Gluon


def _kernel_that_does_not_compile(name: str, calls: list):
    """Stands in for a Gluon kernel ``name`` whose compilation fails at its first launch (each launch's grid is appended
    to ``calls``), as where Gluon's API moved."""

    class NotCompiling:
        fn = type("fn", (), {"__name__": name})

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                calls.append(grid)
                raise AttributeError("module 'triton.experimental.gluon.language' has no attribute 'some_op'")
            return launch

    return NotCompiling()


def test_gluon_backward_that_does_not_compile_falls_back(monkeypatch, caplog):
    """A Triton whose Gluon does not compile the kernel (its API moves between releases): the backward runs the Triton
    kernel instead, with the reference gradients, says so once in the log, and does not try Gluon again."""
    calls = []
    monkeypatch.setitem(st._kernels(), "bwd_seq_gluon", _kernel_that_does_not_compile("bwd_seq_gluon_kernel", calls))
    monkeypatch.setattr(st, "_GLUON_FAILED", [""])  # this test's failure stays in this test
    torch.manual_seed(5)
    b, h, w, d, n, r = (1, 3, 5, 6, 16, 2) if not CUDA else (2, 9, 13, 70, 16, 6)
    st.set_config(st.ScanConfig(bwd_gluon=1) if CUDA else st.ScanConfig(
        fwd_block_l=4, fwd_block_d=4, fwd_warps=1, bwd_block_l=4, bwd_block_d=32, bwd_warps=1, seg_len=8, bwd_gluon=1))
    params = make_params(d, n, r)
    x = torch.randn(b, h, w, d, device=DEVICE, requires_grad=True)
    with caplog.at_level("WARNING", logger="vmunet_monai.ops.ss2d_triton"):
        for _ in range(2):
            assert_gradients_match_reference(x, params, "bwd_seq_kernel")
    assert len(calls) == 1 and "some_op" in st._GLUON_FAILED[0]
    assert sum("Gluon scan backward does not compile" in rec.getMessage() for rec in caplog.records) == 1


@pytest.mark.skipif(not CUDA, reason="Gluon kernels compile for a GPU only (no interpreter)")
@pytest.mark.parametrize("block_d", [32, 64])
def test_gluon_forward_matches_reference(block_d):
    """fwd_gluon=1 (the Gluon sequential forward, one warp per 32 channels) against the reference: outputs with and
    without gradients (states saved or not), and the gradients of the backward that starts from its saved states;
    batch 1 and 2, odd H x W (117 = 3 x 32 + 21 steps: a partial last segment), masked channel blocks (70 channels)."""
    if st._kernels()["fwd_seq_gluon"] is None:
        pytest.skip("this Triton has no triton.experimental.gluon")
    for b, h, w, d in ((1, 9, 13, 70), (2, 19, 23, 96)):
        torch.manual_seed(13)
        st.set_config(st.ScanConfig(fwd_seq=1, fwd_seq_block_d=block_d, fwd_seq_warps=block_d // 32, fwd_block_l=16,
                                    seg_len=32, bwd_block_l=16, fwd_gluon=1))
        params = make_params(d, 16, 6)
        x = torch.randn(b, h, w, d, device=DEVICE, requires_grad=True)
        with torch.no_grad():
            y_inf = st.ss2d_scan_triton(x, *params)
        assert st._LAST_FWD_KERNEL[0] == "fwd_seq_gluon_kernel"
        y_ref = ss2d_ref(x, *params)
        assert rel_err(y_inf, y_ref) < 1e-4
        assert_gradients_match_reference(x, params, "bwd_seq_gluon_kernel")
        assert st._LAST_FWD_KERNEL[0] == "fwd_seq_gluon_kernel"


def test_gluon_forward_only_where_it_applies(monkeypatch):
    """fwd_gluon=1 picks the Gluon forward only where the sequential forward runs, for the path it covers (pre-softplus
    delta without a bias in the kernel, the cross scan, 16 states, one warp per 32 channels) and when importable."""
    cfg = st.ScanConfig(fwd_gluon=1)
    monkeypatch.setitem(st._kernels(), "fwd_seq_gluon", object())  # as where Gluon imports
    assert st._use_gluon_forward(cfg, True, False, False, True, 16)
    assert st._use_gluon_forward(replace(cfg, fwd_seq_block_d=32, fwd_seq_warps=1), True, False, False, True, 16)
    assert not st._use_gluon_forward(cfg, False, False, False, True, 16)  # the chunked forward was chosen
    assert not st._use_gluon_forward(replace(cfg, fwd_gluon=0), True, False, False, True, 16)
    assert not st._use_gluon_forward(cfg, True, True, True, True, 16)  # softplus + bias in the kernel
    assert not st._use_gluon_forward(cfg, True, False, False, False, 16)  # the plain selective scan
    assert not st._use_gluon_forward(cfg, True, False, False, True, 8)  # d_state 8
    assert not st._use_gluon_forward(cfg, True, False, False, True, 16, fp32_inputs=False)  # bf16 rows
    assert not st._use_gluon_forward(replace(cfg, fwd_seq_warps=1), True, False, False, True, 16)  # 64 ch, 1 warp
    assert not st._use_gluon_forward(replace(cfg, fwd_seq_block_d=16, fwd_seq_warps=1), True, False, False, True, 16)
    assert not st._use_gluon_forward(replace(cfg, seq_stages=1), True, False, False, True, 16)
    monkeypatch.setitem(st._kernels(), "fwd_seq_gluon", None)  # Triton without Gluon
    assert not st._use_gluon_forward(cfg, True, False, False, True, 16)
    monkeypatch.undo()
    if not CUDA:
        assert st._kernels()["fwd_seq_gluon"] is None  # the interpreter does not run Gluon


def test_gluon_forward_that_does_not_compile_falls_back(monkeypatch, caplog):
    """A Triton whose Gluon does not compile the forward: the Triton sequential forward runs instead (reference
    outputs), the log says so once, and Gluon is not tried again."""
    calls = []
    monkeypatch.setitem(st._kernels(), "fwd_seq_gluon", _kernel_that_does_not_compile("fwd_seq_gluon_kernel", calls))
    monkeypatch.setattr(st, "_GLUON_FWD_FAILED", [""])
    torch.manual_seed(6)
    b, h, w, d = (1, 3, 5, 6) if not CUDA else (2, 9, 13, 70)
    st.set_config(st.ScanConfig(fwd_seq=1, fwd_block_l=4, fwd_seq_block_d=32, fwd_seq_warps=1, seg_len=8,
                                bwd_block_l=4, fwd_gluon=1))
    params = make_params(d, 16, 2)
    x = torch.randn(b, h, w, d, device=DEVICE)
    with caplog.at_level("WARNING", logger="vmunet_monai.ops.ss2d_triton"):
        for _ in range(2):
            y = st.ss2d_scan_triton(x, *params)
            assert st._LAST_FWD_KERNEL[0] == "fwd_seq_kernel"
            assert rel_err(y, ss2d_ref(x, *params)) < 1e-4
    assert len(calls) == 1 and "some_op" in st._GLUON_FWD_FAILED[0]
    assert sum("Gluon scan forward does not compile" in rec.getMessage() for rec in caplog.records) == 1


def test_sequential_forward_matches_chunked():
    """fwd_seq=1 (one time step per iteration) gives the chunked forward's outputs and gradients (the backward
    starts from the states it saved)."""
    torch.manual_seed(9)
    b, h, w, d, n, r = (1, 3, 5, 6, 4, 2) if not CUDA else (2, 19, 23, 96, 16, 6)
    params = make_params(d, n, r)
    x = torch.randn(b, h, w, d, device=DEVICE, requires_grad=True)
    # a short seg_len so that the forward saves several states (t = 0, 8 and the end) for the backward
    base = st.ScanConfig(fwd_block_l=4, fwd_block_d=8, fwd_seq_block_d=4, bwd_block_l=8, bwd_block_d=8, seg_len=8) \
        if not CUDA else st.ScanConfig()
    results = []
    for seq in (0, 1):
        st.set_config(base, fwd_seq=seq)
        y = st.ss2d_scan_triton(x, *params)
        results.append([y.detach(), *torch.autograd.grad(y.square().sum(), [x, *params])])
    for name, a, c in zip(["y"] + NAMES, *results):
        assert rel_err(a, c) < 1e-5, name


def test_forward_kernel_choice_follows_the_program_count(monkeypatch):
    """fwd_seq=2 takes the sequential forward only with >= 4 warps per multiprocessor (one-warp programs of 32
    channels here; with 64-channel two-warp programs the count of warps is the same)."""
    monkeypatch.setattr(st, "_multiprocessors", lambda device: 132)  # an H100 / H200
    assert st.ScanConfig().fwd_seq == 2
    cfg = replace(st.ScanConfig(), fwd_seq_block_d=32, fwd_seq_warps=1)
    dev = torch.device("cuda")
    # VM-UNet at 256x256: stage 1 (D=192) and stage 4 (D=1536), 4 directions
    assert st._use_seq_forward(cfg, 32 * 4, 192, dev)  # 768 programs
    assert st._use_seq_forward(cfg, 1 * 4, 1536, dev) is False  # 192 programs: batch-1 latency
    assert st._use_seq_forward(cfg, 4 * 4, 1536, dev)  # 768
    assert st._use_seq_forward(cfg, 4 * 4, 192, dev) is False  # 96
    wide = replace(cfg, fwd_seq_block_d=64, fwd_seq_warps=2)
    assert st._use_seq_forward(wide, 32 * 4, 192, dev)  # 384 programs, 768 warps
    assert st._use_seq_forward(wide, 1 * 4, 1536, dev) is False  # 96 programs, 192 warps
    assert st._use_seq_forward(replace(cfg, fwd_seq=0), 32 * 4, 192, dev) is False
    assert st._use_seq_forward(replace(cfg, fwd_seq=1), 4, 32, dev) is True


def test_torch_compile_fullgraph_and_function_fallback(monkeypatch):
    """The fused core is a torch.library custom op: torch.compile traces it without a graph break; the
    plain autograd.Function fallback (torch without custom_op) gives the same results."""
    st.set_config(MID_CFG if not CUDA else st.ScanConfig())
    torch.manual_seed(7)
    b, h, w, d, n, r = (1, 3, 5, 6, 4, 2) if not CUDA else (2, 14, 14, 96, 16, 6)
    params = make_params(d, n, r)
    x = torch.randn(b, h, w, d, device=DEVICE, requires_grad=True)
    y_ref = ss2d_ref(x, *params)
    g_ref = torch.autograd.grad(y_ref.square().sum(), [x, *params])

    compiled = torch.compile(st.ss2d_scan_triton, backend="aot_eager", fullgraph=True)
    y = compiled(x, *params)
    assert rel_err(y, y_ref) < 1e-4
    for name, got, want in zip(NAMES, torch.autograd.grad(y.square().sum(), [x, *params]), g_ref):
        assert rel_err(got, want) < 1e-4, name

    monkeypatch.setattr(st, "_CUSTOM_OP", None)
    y = st.ss2d_scan_triton(x, *params)
    assert rel_err(y, y_ref) < 1e-4
    for name, got, want in zip(NAMES, torch.autograd.grad(y.square().sum(), [x, *params]), g_ref):
        assert rel_err(got, want) < 1e-4, name


def test_bad_inputs_and_config_are_rejected():
    params = make_params(4, 2, 1)
    with pytest.raises(ValueError, match="shape"):
        st.ss2d_scan_triton(torch.randn(1, 3, 3, 5, device=DEVICE), *params)  # D=5 vs weights for D=4
    with pytest.raises(ValueError, match="B, H, W, D"):
        st.ss2d_scan_triton(torch.randn(3, 3, 4, device=DEVICE), *params)
    with pytest.raises(ValueError, match="power of two"):
        st.set_config(fwd_block_l=12)
    with pytest.raises(ValueError, match="multiple"):
        st.set_config(fwd_block_l=32, seg_len=48)
    with pytest.raises(ValueError, match="seg_len must be >= 0"):
        st.set_config(bwd_maxnreg=-2)
    with pytest.raises(ValueError, match="bwd_hist_smem"):
        st.set_config(bwd_hist_smem=2)
    with pytest.raises(NotImplementedError, match="z gate"):
        st.selective_scan_triton(*(torch.zeros(1, 2, 3),) * 2, torch.zeros(2, 1), *(torch.zeros(1, 1, 3),) * 2,
                                 z=torch.zeros(1, 2, 3))


def test_config_for_length_fills_only_the_fields_left_open():
    """bwd_block_l = 0 / seg_len = 0 / bwd_maxnreg = -1 (the defaults) are chosen per sequence length; explicit values are kept; the
    forward's saved states follow the chosen segment length."""
    default = st.ScanConfig()
    assert (default.bwd_block_l, default.seg_len, default.bwd_maxnreg, default.bwd_hist_smem) == (0, 0, -1, -1)
    chosen = {hw: st.config_for_length(default, hw * hw) for hw in (64, 32, 16, 8, 1)}
    assert {hw: (c.bwd_block_l, c.seg_len, c.bwd_maxnreg, c.bwd_hist_smem) for hw, c in chosen.items()} == {
        64: (16, 64, 0, 1), 32: (8, 128, 168, 1), 16: (8, 32, 168, 1), 8: (8, 32, 0, 1), 1: (8, 32, 0, 1)}
    for c in chosen.values():  # every choice is a valid configuration for the default tiles
        assert c.seg_len % c.bwd_block_l == 0 and c.seg_len % c.fwd_block_l == 0
    explicit = st.ScanConfig(bwd_block_l=16, seg_len=64, bwd_maxnreg=0, bwd_hist_smem=0)
    assert st.config_for_length(explicit, 4096) is explicit
    assert st.config_for_length(replace(explicit, bwd_hist_smem=-1), 32 * 32) == replace(explicit, bwd_hist_smem=1)
    # open fields follow the explicit ones: a sub-segment that divides the segment, a segment that both tiles divide
    mixed = st.config_for_length(st.ScanConfig(seg_len=48), 4096)
    assert (mixed.bwd_block_l, mixed.seg_len, mixed.bwd_maxnreg) == (16, 48, 0)
    wide = st.config_for_length(st.ScanConfig(fwd_block_l=128), 8 * 8)
    assert (wide.bwd_block_l, wide.seg_len) == (8, 128)
    half = st.config_for_length(st.ScanConfig(seg_len=256), 32 * 32)
    assert (half.bwd_block_l, half.seg_len, half.bwd_maxnreg) == (8, 256, 168)
    tile = st.config_for_length(st.ScanConfig(bwd_seq=0), 4096)  # the tile backward keeps short tiles
    assert (tile.bwd_block_l, tile.seg_len) == (16, 64)
    assert st._ss2d_n_slots(64 * 64, chosen[64]) == 4096 // 64 + 1


def test_registered_as_triton_backend():
    from vmunet_monai.ops import backends

    backend = backends.get_backend("triton")
    # registered as functions: a "module:function" string is imported on use, which torch.compile cannot trace
    assert backend.fused_core is st.ss2d_scan_triton and backend.fn is st.selective_scan_triton
    assert backend.priority.get("cuda", 0) > backends.get_backend("mamba_ssm").priority.get("cuda", 0)
    # on this machine: usable for CUDA tensors, or on CPU through the interpreter
    assert backend.available(torch.zeros(1, device=DEVICE))
    assert st.is_available() == CUDA


def test_network_outputs_agree_with_generic_backend():
    """Whole tiny VM-UNet: the fused triton core and the generic reference path give the same logits."""
    from vmunet_monai.networks.nets import VMUNet

    if not CUDA:
        # one tile per program: the interpreter's cost is per program and per tile, not per element
        st.set_config(st.ScanConfig(fwd_block_l=64, fwd_block_d=128, bwd_block_l=64, bwd_block_d=128, seg_len=64))
    torch.manual_seed(5)
    net = VMUNet(dims=(8, 16, 32, 64), depths=(1, 1, 1, 1), depths_decoder=(1, 1, 1, 1), d_state=4,
                 drop_path_rate=0.0).to(DEVICE).eval()
    x = torch.randn(1, 3, 32, 32, device=DEVICE)
    with torch.no_grad():
        ref = net.set_scan_backend("reference")(x)
        got = net.set_scan_backend("triton")(x)
    assert rel_err(got, ref) < 1e-4


def test_direction_parts_sum_to_the_merged_output():
    """``ss2d_scan_triton_parts`` (inference) returns the four directions' outputs in pixel order: their sum is
    ``ss2d_scan_triton``'s output; it refuses inputs that need gradients."""
    st.set_config(MID_CFG)
    torch.manual_seed(3)
    params = make_params(6, 4, 2)
    x = torch.randn(2, 4, 3, 6, device=DEVICE)
    with torch.no_grad():
        parts = st.ss2d_scan_triton_parts(x, *params)
        merged = st.ss2d_scan_triton(x, *params)
    assert parts.shape == (4, 2, 4, 3, 6) and parts.dtype == torch.float32
    assert rel_err(parts.sum(0), merged) < 1e-6
    assert rel_err(parts.sum(0), ss2d_ref(x, *params)) < 1e-4
    with pytest.raises(RuntimeError, match="no backward"):
        st.ss2d_scan_triton_parts(x, *params)


def _norm_gate_inputs(b=2, h=4, w=3, d=6, n=4, r=2, seed=4):
    torch.manual_seed(seed)
    params = make_params(d, n, r)
    x = torch.randn(b, h, w, d, device=DEVICE, requires_grad=True)
    z = torch.randn(b, h, w, 2 * d, device=DEVICE).chunk(2, dim=-1)[1].requires_grad_()
    norm_w = (1 + 0.3 * torch.randn(d, device=DEVICE)).requires_grad_()
    norm_b = (0.3 * torch.randn(d, device=DEVICE)).requires_grad_()
    return x, params, z, norm_w, norm_b


def test_core_norm_gate_matches_reference_with_and_without_gradients():
    """``ss2d_core_norm_gate`` on the triton core = published core -> out_norm -> * silu(z): at inference (the
    four directions summed inside the norm kernel) and in training (core op + fused norm/gate with autograd),
    output and every gradient (x, the core's parameters, z, the norm's weight and bias)."""
    from vmunet_monai.ops.ss2d import ss2d_core_norm_gate

    st.set_config(MID_CFG)
    x, params, z, norm_w, norm_b = _norm_gate_inputs()
    leaves = [x, *params, z, norm_w, norm_b]
    ref = F.layer_norm(ss2d_ref(x, *params), (x.shape[-1],), norm_w, norm_b, 1e-5) * F.silu(z)
    with torch.no_grad():
        got = ss2d_core_norm_gate(x.permute(0, 3, 1, 2), *params, "triton", z, norm_w, norm_b, 1e-5)
    assert got.shape == ref.shape and rel_err(got, ref) < 1e-4
    got = ss2d_core_norm_gate(x.permute(0, 3, 1, 2), *params, "triton", z, norm_w, norm_b, 1e-5)
    assert rel_err(got, ref) < 1e-4
    grad_out = torch.randn_like(ref)
    grads = torch.autograd.grad(got, leaves, grad_out)
    grads_ref = torch.autograd.grad(ref, leaves, grad_out)
    for name, g, want in zip(NAMES + ["z", "norm.weight", "norm.bias"], grads, grads_ref):
        assert rel_err(g, want) < 1e-4, f"gradient of {name}: relative error {rel_err(g, want):.2e}"


@pytest.mark.skipif(not CUDA, reason="the fused norm/gate runs in SS2D on CUDA only")
@pytest.mark.parametrize("amp", [False, True])
def test_ss2d_module_fused_norm_gate_matches_unfused(monkeypatch, amp):
    """The SS2D module on CUDA (fused out_norm + gate; at inference with the direction sum) against the same
    module with the Triton norm turned off (out_norm then * silu(z), as published), fp32 and bf16 autocast."""
    from vmunet_monai.networks.blocks.ss2d import SS2D

    torch.manual_seed(6)
    m = SS2D(d_model=48, scan_backend="triton").cuda()
    with torch.no_grad():
        m.out_norm.weight.normal_(1, 0.3)
        m.out_norm.bias.normal_(0, 0.3)
    x = torch.randn(2, 16, 12, 48, device="cuda", requires_grad=True)
    leaves = [x, *m.parameters()]

    def run(train):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp), torch.set_grad_enabled(train):
            out = m(x)
        return out, (torch.autograd.grad(out.float().square().mean(), leaves) if train else None)

    fused = [run(False)[0], *run(True)]
    monkeypatch.setenv("VMUNET_TRITON_LAYER_NORM", "0")
    plain = [run(False)[0], *run(True)]
    tol = 1e-5 if not amp else 2e-2
    assert rel_err(fused[0], plain[0]) < tol and rel_err(fused[1], plain[1]) < tol
    for (name, _), g, want in zip([("x", x), *m.named_parameters()], fused[2], plain[2]):
        assert rel_err(g, want) < (1e-4 if not amp else 5e-2), name


def test_compiled_network_matches_eager_for_inference_and_training():
    """torch.compile(fullgraph=True) of a whole VM-UNet on the triton backend: no graph break (the fused core is
    a custom op with a backward op), compiled logits and gradients equal the eager ones. On CPU ``aot_eager``
    (Dynamo and AOTAutograd tracing, no code generation) keeps it fast; on the GPU the default inductor."""
    from vmunet_monai.networks.nets import VMUNet

    if not CUDA:
        st.set_config(st.ScanConfig(fwd_block_l=64, fwd_block_d=128, bwd_block_l=64, bwd_block_d=128, seg_len=64))
    torch.manual_seed(8)
    net = VMUNet(dims=(8, 16, 32, 64), depths=(1, 1, 1, 1), depths_decoder=(1, 1, 1, 1), d_state=4,
                 drop_path_rate=0.0).to(DEVICE).set_scan_backend("triton")
    x = torch.randn(2, 3, 32, 32, device=DEVICE)
    torch._dynamo.reset()
    compiled = torch.compile(net, fullgraph=True, **({} if CUDA else {"backend": "aot_eager"}))
    with torch.no_grad():
        want, got = net.eval()(x), compiled(x)
    # inductor fuses and reorders the fp32 layer-norm / projection arithmetic: 1.5e-5 measured on the H200
    assert rel_err(got, want) < 1e-4
    net.train()
    params = [p for p in net.parameters() if p.requires_grad]
    want_grads = torch.autograd.grad(net(x).square().mean(), params)
    got_grads = torch.autograd.grad(compiled(x).square().mean(), params)
    for (name, _), got_g, want_g in zip(net.named_parameters(), got_grads, want_grads):
        assert rel_err(got_g, want_g) < 1e-4, name


def test_kernels_compile_for_hopper_without_a_gpu():
    """The interpreter runs the kernels' Python but not Triton's compiler: compile every kernel ahead of time
    for sm_90 (as on the H200; scripts/triton_kernel_info.py) so that a kernel that would not compile fails here,
    on CPU, in CI. A fresh process: the kernels of this one may have been built for the interpreter."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "triton_kernel_info.py"
    env = dict(os.environ, TRITON_INTERPRET="0")
    out = subprocess.run([sys.executable, str(script), "--loops"], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("  ") and not ln.startswith("      ")]
    if "ptxas unavailable" not in out.stdout and "cuobjdump unavailable" not in out.stdout:
        # --loops: the loops of each kernel follow its line; the sequential forward's time loop has its 16 exp2
        # per thread per step (a 16-state x 32-channel slice per warp)
        all_lines = out.stdout.splitlines()
        at = next(i for i, ln in enumerate(all_lines) if ln.strip().startswith("fwd_seq_kernel"))
        fwd_loops = []
        for ln in all_lines[at + 1:]:
            if not ln.startswith("      "):
                break
            fwd_loops.append(ln.strip())
        time_loop = r"loop 0x[0-9a-f]+-0x[0-9a-f]+: \d+ instructions; MUFU 16,.*"
        assert any(re.fullmatch(time_loop, ln) for ln in fwd_loops), fwd_loops
    # 4 scan kernels (7 with the Gluon forward and the Gluon backward's two history places where this Triton has
    # Gluon), 2 softplus kernels, the dt
    # backward at 2 ranks for fp32 and bf16 models and its forward at 2 ranks for bf16 ones, 2 layer-norm kernels at 2
    # widths (the wider as SS2D's fused out_norm + gate)
    try:  # the Gluon kernels are compiled where this Triton has Gluon (the interpreter here does not run them)
        import vmunet_monai.ops.ss2d_gluon_seq_kernels  # noqa: F401
        with_gluon = 3
    except (ImportError, AttributeError):
        with_gluon = 0
    assert len(lines) == 16 + with_gluon, out.stdout
    for line in lines:  # no register spills (a spilling kernel is slow; the dt tiles were chosen to avoid them)
        if line.strip().startswith("bwd_kernel (tile"):
            continue  # the non-default tile backward: 255 registers, spills a few bytes with Triton 3.6 (H200 machine)
        assert " 0 bytes spill stores" in line or "ptxas unavailable" in line, line
    for line in lines:
        assert "compile error" not in line, line
        # registers come from a separate ptxas -v run; Triton 3.6 on the GPU machine ships no usable ptxas for it
        assert "registers" in line or "ptxas unavailable" in line, line

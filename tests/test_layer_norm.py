"""The Triton LayerNorm (``vmunet_monai.ops.layer_norm_triton``) against ``F.layer_norm``.

Without CUDA the kernels run in the Triton interpreter (``TRITON_INTERPRET=1``, set before they are imported);
with CUDA on the GPU, where the module ``LayerNorm`` also uses them.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton", reason="triton is not installed")

from vmunet_monai.networks.blocks import LayerNorm  # noqa: E402
from vmunet_monai.ops import layer_norm_triton as lnt  # noqa: E402

DEVICE = "cuda" if CUDA else "cpu"


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12)).item()


@pytest.mark.parametrize("n", [24, 96, 100, 1536])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_torch_forward_and_backward(n, dtype):
    """Output, dx, dweight, dbias against float64 ``F.layer_norm`` autograd; widths of the paper network (24 =
    the final expansion, 96, 1536) and one that is not a power of two; rows that do not fill the last tile, and
    several tiles per backward program (the interpreter runs 4 programs)."""
    torch.manual_seed(n)
    rows = 300 if not CUDA else 70_001
    x = (torch.randn(rows, n, device=DEVICE) * 3 + 1).to(dtype)
    w = torch.randn(n, device=DEVICE)
    b = torch.randn(n, device=DEVICE)
    dy = torch.randn(rows, n, device=DEVICE)
    xs = [t.clone().requires_grad_() for t in (x, w, b)]
    y = lnt.layer_norm_triton(*xs, eps=1e-5, out_dtype=torch.float32)
    grads = torch.autograd.grad(y, xs, dy)
    ref_in = [t.detach().double().requires_grad_() for t in (x, w, b)]
    ref = F.layer_norm(ref_in[0], (n,), ref_in[1], ref_in[2], 1e-5)
    ref_grads = torch.autograd.grad(ref, ref_in, dy.double())
    assert y.dtype == torch.float32
    assert rel_err(y, ref) < 1e-5
    assert grads[0].dtype == dtype  # dx in the input's dtype, like autograd of F.layer_norm
    assert rel_err(grads[0], ref_grads[0]) < (1e-5 if dtype == torch.float32 else 1e-2)
    for got, want in zip(grads[1:], ref_grads[1:]):
        assert got.dtype == torch.float32
        assert rel_err(got, want) < 1e-5


def test_without_affine_and_leading_dims():
    x = torch.randn(2, 5, 7, 40, device=DEVICE)
    y = lnt.layer_norm_triton(x, None, None, eps=1e-6)
    assert y.shape == x.shape
    assert rel_err(y, F.layer_norm(x.double(), (40,), eps=1e-6)) < 1e-5


def test_module_is_a_layer_norm_with_the_same_state_dict():
    """Same keys, shapes and init as nn.LayerNorm (published weights load); on CPU it is F.layer_norm exactly."""
    ours, theirs = LayerNorm(96), nn.LayerNorm(96)
    assert isinstance(ours, nn.LayerNorm)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(3, 4, 4, 96)
    assert torch.equal(ours(x), theirs(x))


@pytest.mark.skipif(not CUDA, reason="the module uses the kernels on CUDA tensors only")
def test_module_on_cuda_under_autocast_matches_torch():
    torch.manual_seed(0)
    ours, theirs = LayerNorm(192).cuda(), nn.LayerNorm(192).cuda()
    with torch.no_grad():
        ours.weight.normal_()
        ours.bias.normal_()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(32, 64, 64, 192, device="cuda").bfloat16().requires_grad_()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        a, b = ours(x), theirs(x)
    assert a.dtype == b.dtype == torch.float32
    assert rel_err(a, b) < 1e-5
    ga = torch.autograd.grad(a.square().mean(), [x, ours.weight, ours.bias])
    gb = torch.autograd.grad(b.square().mean(), [x, theirs.weight, theirs.bias])
    for got, want in zip(ga, gb):
        assert rel_err(got, want) < 1e-2


def _norm_gate_ref(x, z, w, b, eps=1e-5):
    """float64 ``layer_norm(x) * silu(z)`` with autograd (SS2D's out_norm and gate)."""
    return F.layer_norm(x, (x.shape[-1],), w, b, eps) * F.silu(z)


@pytest.mark.parametrize("n", [24, 100])
@pytest.mark.parametrize("z_dtype", [torch.float32, torch.bfloat16])
def test_norm_gate_matches_torch_forward_and_backward(n, z_dtype):
    """``layer_norm_gate`` (one kernel forward, one backward) against float64 ``F.layer_norm(x) * silu(z)``:
    output and the gradients of x, weight, bias and z; z a strided view with contiguous rows (the second half of
    in_proj's output, as in SS2D), several tiles per backward program."""
    torch.manual_seed(n)
    rows = 300 if not CUDA else 70_001
    x = torch.randn(rows, n, device=DEVICE) * 3 + 1
    xz = (torch.randn(rows, 2 * n, device=DEVICE) * 2).to(z_dtype)
    w = torch.randn(n, device=DEVICE)
    b = torch.randn(n, device=DEVICE)
    dy = torch.randn(rows, n, device=DEVICE)
    xs = [t.clone().requires_grad_() for t in (x, w, b, xz)]
    z = xs[3].chunk(2, dim=-1)[1]
    assert not z.is_contiguous() and lnt._row_stride(z) == 2 * n
    y = lnt.layer_norm_gate(xs[0], z, (n,), xs[1], xs[2], eps=1e-5)
    assert y.dtype == z_dtype and y.shape == x.shape
    grads = torch.autograd.grad(y, xs, dy.to(z_dtype))
    ref_in = [t.detach().double().requires_grad_() for t in (x, w, b, xz)]
    ref = _norm_gate_ref(ref_in[0], ref_in[3].chunk(2, dim=-1)[1], ref_in[1], ref_in[2])
    ref_grads = torch.autograd.grad(ref, ref_in, dy.to(z_dtype).double())
    tol = 1e-5 if z_dtype == torch.float32 else 1e-2
    assert rel_err(y, ref) < tol
    assert grads[3].dtype == z_dtype and torch.equal(grads[3][:, :n], torch.zeros_like(grads[3][:, :n]))
    for got, want in zip(grads, ref_grads):
        assert rel_err(got, want) < tol


def test_norm_gate_of_parts_sums_them_and_refuses_gradients():
    """``layer_norm_gate_parts`` normalises the sum of its parts (SS2D's four directions) without writing it."""
    torch.manual_seed(1)
    parts = torch.randn(4, 3, 5, 7, 40, device=DEVICE)
    z = torch.randn(3, 5, 7, 40, device=DEVICE)
    w, b = torch.randn(40, device=DEVICE), torch.randn(40, device=DEVICE)
    y = lnt.layer_norm_gate_parts(parts, z, w, b, eps=1e-6)
    ref = _norm_gate_ref(parts.double().sum(0), z.double(), w.double(), b.double(), eps=1e-6)
    assert y.shape == z.shape and rel_err(y, ref) < 1e-5
    with pytest.raises(RuntimeError, match="no backward"):
        lnt.layer_norm_gate_parts(parts, z, w.requires_grad_(), b)


def test_norm_gate_rejects_mismatched_shapes():
    x = torch.randn(4, 8, device=DEVICE)
    with pytest.raises(ValueError, match="gate of the input's shape"):
        lnt.layer_norm_gate(x, torch.randn(4, 1, device=DEVICE), (8,))
    with pytest.raises(ValueError, match="last-dimension norm"):
        lnt.layer_norm_gate(x, torch.randn(4, 8, device=DEVICE), (4, 8))
    with pytest.raises(ValueError, match="parts of shape"):
        lnt.layer_norm_gate_parts(torch.randn(4, 3, 8, device=DEVICE), x)


def test_norm_gate_is_only_offered_where_it_runs(monkeypatch):
    """Fused only for CUDA gates in eager mode, with a last-dimension norm of the gate's width; never on CPU."""
    z = torch.randn(2, 3, 16)
    assert not lnt.can_fuse_norm_gate(z, (16,))  # CPU tensors: the modules' own path
    if CUDA:
        zc = z.cuda()
        assert lnt.can_fuse_norm_gate(zc, (16,))
        assert not lnt.can_fuse_norm_gate(zc, (3, 16)) and not lnt.can_fuse_norm_gate(zc, (8,))
        monkeypatch.setenv("VMUNET_TRITON_NORM_GATE", "0")
        assert not lnt.can_fuse_norm_gate(zc, (16,))
        monkeypatch.setenv("VMUNET_TRITON_NORM_GATE", "1")
        monkeypatch.setenv("VMUNET_TRITON_LAYER_NORM", "0")
        assert not lnt.can_fuse_norm_gate(zc, (16,))

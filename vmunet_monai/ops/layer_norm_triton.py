"""LayerNorm over the last dimension with Triton kernels on CUDA; ``F.layer_norm`` everywhere else.

Same maths as ``torch.nn.functional.layer_norm`` (biased variance, statistics in fp32, autocast's fp32 output
under autocast); the reference is ``F.layer_norm`` itself (tests/test_layer_norm.py compares them). The Triton
path is used for CUDA tensors when Triton imports and nothing is tracing the model (``torch.compile`` and
``torch.export`` see ``F.layer_norm``, which inductor fuses with its neighbours on its own). Set
``VMUNET_TRITON_LAYER_NORM=0`` to turn it off.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .ss2d_triton import _multiprocessors, _triton_importable, triton_cdiv

__all__ = ["layer_norm", "layer_norm_triton", "layer_norm_gate", "layer_norm_gate_parts", "can_fuse_norm_gate"]

# elements per program tile: measured VM-UNet widths are 24..1536 channels
_TILE = 4096


def _enabled() -> bool:
    return os.environ.get("VMUNET_TRITON_LAYER_NORM", "1") not in ("0", "")


@lru_cache(maxsize=None)
def _kernels():
    from . import layer_norm_triton_kernels as kern

    return kern.layer_norm_fwd_kernel, kern.layer_norm_bwd_kernel


def _tracing() -> bool:
    compiler = getattr(torch, "compiler", None)
    is_compiling = getattr(compiler, "is_compiling", None)
    return bool(is_compiling is not None and is_compiling())


def _use_triton(x: Tensor, normalized_shape: Sequence[int]) -> bool:
    if not x.is_cuda or len(normalized_shape) != 1 or x.numel() == 0 or _tracing() or not _enabled():
        return False
    return x.dtype in (torch.float32, torch.bfloat16, torch.float16) and _triton_importable()


def _tiles(n: int, tile: int = _TILE) -> "tuple[int, int, int]":
    """(BLOCK_N, BLOCK_M, warps) for rows of n elements in tiles of about ``tile`` elements."""
    block_n = max(16, 1 << (n - 1).bit_length())
    block_m = max(1, tile // block_n)
    return block_n, block_m, (4 if block_m * block_n <= _TILE else 8)


def _row_stride(z: Tensor) -> "int | None":
    """Stride between the rows of ``z`` seen as (M, N) (last dimension contiguous), or None if not uniform."""
    if z.stride(-1) != 1:
        return None
    row = z.stride(-2) if z.dim() > 1 else z.shape[-1]
    for i in range(z.dim() - 2):
        if z.shape[i] > 1 and z.stride(i) != z.stride(i + 1) * z.shape[i + 1]:
            return None
    return row


def _launch_fwd(x2: Tensor, weight, bias, eps: float, out_dtype: torch.dtype, z: Optional[Tensor], save_stats: bool,
                parts: int = 1):
    """Run the forward kernel over the (parts, M, N) / (M, N) contiguous ``x2``; returns (y (M, N), mean, rstd)."""
    m, n = x2.shape[-2:]
    block_n, block_m, warps = _tiles(n)
    y = torch.empty((m, n), device=x2.device, dtype=out_dtype)
    mean = torch.empty((m if save_stats else 1,), device=x2.device, dtype=torch.float32)
    rstd = torch.empty_like(mean)
    fwd, _ = _kernels()
    fwd[(triton_cdiv(m, block_m),)](
        x2, weight if weight is not None else x2, bias if bias is not None else x2, y, mean, rstd, m, n, eps,
        z if z is not None else x2, _row_stride(z) if z is not None else 0, m * n,
        BLOCK_M=block_m, BLOCK_N=block_n, HAS_W=weight is not None, HAS_B=bias is not None,
        SAVE_STATS=save_stats, HAS_GATE=z is not None, KP=parts, num_warps=warps)
    return y, mean, rstd


class _LayerNormFunction(torch.autograd.Function):
    """LayerNorm of the last dimension, optionally gated: ``LN(x) * silu(z)`` (``z`` None: plain LayerNorm)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float, out_dtype: torch.dtype,
                z: Optional[Tensor] = None):
        n = x.shape[-1]
        x2 = x.contiguous().view(-1, n)
        if z is not None and _row_stride(z) is None:
            z = z.contiguous()
        need_grad = any(ctx.needs_input_grad[:3]) or (z is not None and ctx.needs_input_grad[5])
        y, mean, rstd = _launch_fwd(x2, weight, bias, eps, out_dtype, z, need_grad)
        if need_grad:
            ctx.save_for_backward(x2, weight, bias, mean, rstd, z)
            ctx.shape = x.shape
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, dy: Tensor):
        x2, weight, bias, mean, rstd, z = ctx.saved_tensors
        m, n = x2.shape
        # half-size tiles: the backward holds ~6 fp32 values per element (~100 registers instead of ~200 at 4 warps)
        block_n, block_m, warps = _tiles(n, _TILE // 2)
        n_tiles = triton_cdiv(m, block_m)
        # 4 programs per multiprocessor, each over consecutive tiles: few weight / bias partials to sum
        tiles = triton_cdiv(n_tiles, min(n_tiles, 4 * _multiprocessors(x2.device)))
        grid = triton_cdiv(n_tiles, tiles)
        dx = torch.empty_like(x2)
        dz = torch.empty((m, n), device=z.device, dtype=z.dtype) if z is not None else None
        dw_part = torch.empty((grid, n), device=x2.device, dtype=torch.float32)
        db_part = torch.empty_like(dw_part)
        _, bwd = _kernels()
        bwd[(grid,)](dy.contiguous().view(m, n), x2, weight if weight is not None else x2, mean, rstd, dx,
                     dw_part, db_part, m, n, tiles, bias if bias is not None else x2,
                     z if z is not None else x2, _row_stride(z) if z is not None else 0, dz if dz is not None else x2,
                     BLOCK_M=block_m, BLOCK_N=block_n, HAS_W=weight is not None,
                     HAS_B=bias is not None and z is not None, HAS_GATE=z is not None, num_warps=warps)
        dw = dw_part.sum(0).to(weight.dtype) if weight is not None and ctx.needs_input_grad[1] else None
        db = db_part.sum(0).to(bias.dtype) if bias is not None and ctx.needs_input_grad[2] else None
        dz = dz.view(ctx.shape) if dz is not None else None
        return dx.view(ctx.shape), dw, db, None, None, dz


def layer_norm_triton(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float = 1e-5,
                      out_dtype: Optional[torch.dtype] = None) -> Tensor:
    """LayerNorm of ``x`` over its last dimension with the Triton kernels (CUDA, or CPU under
    ``TRITON_INTERPRET=1``); the output is ``out_dtype`` (default ``x.dtype``), statistics in fp32."""
    return _LayerNormFunction.apply(x, weight, bias, eps, out_dtype or x.dtype, None)


def layer_norm(x: Tensor, normalized_shape: Sequence[int], weight: Optional[Tensor] = None,
               bias: Optional[Tensor] = None, eps: float = 1e-5) -> Tensor:
    """Drop-in for ``F.layer_norm``: the Triton kernels for a last-dimension norm of a CUDA tensor, else torch.

    Example::

        >>> y = layer_norm(torch.randn(8, 64, 64, 96, device="cuda"), (96,))
    """
    if not _use_triton(x, normalized_shape):
        return F.layer_norm(x, normalized_shape, weight, bias, eps)
    # under autocast torch runs layer_norm in fp32 and returns fp32: do the same
    out_dtype = torch.float32 if torch.is_autocast_enabled(x.device.type) else x.dtype
    return layer_norm_triton(x, weight, bias, eps, out_dtype)


def can_fuse_norm_gate(z: Tensor, normalized_shape: Sequence[int]) -> bool:
    """Whether :func:`layer_norm_gate` can run its kernels with this gate ``z`` (CUDA, eager, triton present,
    a last-dimension norm of ``z``'s width). ``VMUNET_TRITON_NORM_GATE=0`` turns the fusion off (the Triton
    LayerNorm then still runs, alone), ``VMUNET_TRITON_LAYER_NORM=0`` both."""
    return (_use_triton(z, normalized_shape) and tuple(normalized_shape) == (z.shape[-1],)
            and z.stride(-1) == 1 and os.environ.get("VMUNET_TRITON_NORM_GATE", "1") not in ("0", ""))


def _gate_out_dtype(x: Tensor, z: Tensor) -> torch.dtype:
    # under autocast the product only feeds out_proj, which runs in the autocast dtype: write that directly
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return z.dtype


def layer_norm_gate(x: Tensor, z: Tensor, normalized_shape: Sequence[int], weight: Optional[Tensor] = None,
                    bias: Optional[Tensor] = None, eps: float = 1e-5) -> Tensor:
    """``layer_norm(x) * silu(z)`` (SS2D's ``out_norm`` and gate) in one kernel forward and one backward.

    Needs :func:`can_fuse_norm_gate` and ``x.shape == z.shape``. ``x`` is normalised in fp32 whatever its dtype;
    the result is ``z``'s dtype, or under autocast the autocast dtype (the gated product feeds ``out_proj``, which
    autocast runs in that dtype: the fp32 product the unfused modules make is rounded there instead). ``z`` may be a
    strided view with contiguous rows (the second half of ``in_proj``'s output); its gradient comes back in its
    dtype.

    Example::

        >>> out = layer_norm_gate(y, z, (192,), norm.weight, norm.bias, norm.eps)   # y, z: (B, H, W, 192) CUDA
    """
    if z.shape != x.shape or tuple(normalized_shape) != (x.shape[-1],):
        raise ValueError(f"layer_norm_gate needs a gate of the input's shape and a last-dimension norm: x "
                         f"{tuple(x.shape)}, z {tuple(z.shape)}, normalized_shape {tuple(normalized_shape)}")
    return _LayerNormFunction.apply(x, weight, bias, eps, _gate_out_dtype(x, z), z)


def layer_norm_gate_parts(parts: Tensor, z: Tensor, weight: Optional[Tensor] = None, bias: Optional[Tensor] = None,
                          eps: float = 1e-5) -> Tensor:
    """:func:`layer_norm_gate` of ``parts.sum(0)`` for a contiguous (P, ..., N) ``parts``, summed inside the kernel
    (SS2D's four scan directions: the sum is never written). Inference only: no gradient."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (parts, z, weight, bias)):
        raise RuntimeError("layer_norm_gate_parts has no backward; use layer_norm_gate on the summed input")
    if parts.shape[1:] != z.shape:
        raise ValueError(f"layer_norm_gate_parts needs parts of shape (P, *z.shape): parts {tuple(parts.shape)}, "
                         f"z {tuple(z.shape)}")
    n = parts.shape[-1]
    p = parts.shape[0]
    x2 = parts.contiguous().view(p, -1, n)
    if _row_stride(z) is None:
        z = z.contiguous()
    y, _, _ = _launch_fwd(x2, weight, bias, eps, _gate_out_dtype(parts, z), z, False, parts=p)
    return y.view(parts.shape[1:])

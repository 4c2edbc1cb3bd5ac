"""The SS2D core: four-direction cross-scan, per-direction projections, selective scan, cross-merge.

This is the published ``SS2D.forward_corev0`` maths (reference section 1.4) written as plain functions so
that backends can replace the whole core (the ``triton`` backend fuses cross-scan, scan and merge) or only
the selective scan (``torch``, ``reference``, ``mamba_ssm``, ...).
"""

from __future__ import annotations

import importlib

import torch

__all__ = ["cross_scan", "cross_merge", "ss2d_core", "ss2d_core_generic", "ss2d_core_norm_gate"]

def cross_scan(x: torch.Tensor) -> torch.Tensor:
    """``(B, D, H, W)`` -> ``(B, 4, D, L)``: row-major, column-major, and both reversed (published order)."""
    b, d, h, w = x.shape
    length = h * w
    x_hwwh = torch.stack([x.reshape(b, d, length), x.transpose(2, 3).contiguous().view(b, d, length)], dim=1)
    return torch.cat([x_hwwh, torch.flip(x_hwwh, dims=[-1])], dim=1)


def cross_merge(out_y: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`cross_scan` summed over directions: ``(B, 4, D, L)`` -> ``(B, H, W, D)``."""
    b, _, d, length = out_y.shape
    inv_y = torch.flip(out_y[:, 2:4], dims=[-1])
    wh_y = out_y[:, 1].view(b, d, w, h).transpose(2, 3).reshape(b, d, length)
    invwh_y = inv_y[:, 1].view(b, d, w, h).transpose(2, 3).reshape(b, d, length)
    y = out_y[:, 0] + inv_y[:, 0] + wh_y + invwh_y
    return y.transpose(1, 2).reshape(b, h, w, d)


def ss2d_core_generic(
    x: torch.Tensor,
    x_proj_weight: torch.Tensor,
    dt_projs_weight: torch.Tensor,
    dt_projs_bias: torch.Tensor,
    A_logs: torch.Tensor,
    Ds: torch.Tensor,
    backend: str = "auto",
) -> torch.Tensor:
    """Published ``forward_corev0`` with a pluggable selective scan.

    Args:
        x: ``(B, D, H, W)`` activation after the depthwise conv and SiLU.
        x_proj_weight: ``(4, R + 2N, D)``.
        dt_projs_weight: ``(4, D, R)``.
        dt_projs_bias: ``(4, D)``.
        A_logs: ``(4D, N)``.
        Ds: ``(4D,)``.
        backend: selective-scan backend name (see :func:`vmunet_monai.ops.selective_scan_fn`).

    Returns:
        ``(B, H, W, D)`` float32 (float64 for float64 input), the sum of the four directions (before ``out_norm``).
    """
    from vmunet_monai.ops import selective_scan_fn

    b, d, h, w = x.shape
    length = h * w
    k = x_proj_weight.shape[0]
    n = A_logs.shape[1]
    r = dt_projs_weight.shape[2]
    xs = cross_scan(x)
    x_dbl = torch.einsum("b k d l, k c d -> b k c l", xs, x_proj_weight)
    dts, bs, cs = torch.split(x_dbl, [r, n, n], dim=2)
    dts = torch.einsum("b k r l, k d r -> b k d l", dts, dt_projs_weight)
    # The published code runs the scan in float32 even under autocast (float64 stays float64 for tests).
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    out_y = selective_scan_fn(
        xs.to(dtype).reshape(b, -1, length),
        dts.to(dtype).reshape(b, -1, length),
        -torch.exp(A_logs.to(dtype)),
        bs.to(dtype).contiguous(),
        cs.to(dtype).contiguous(),
        Ds.to(dtype),
        delta_bias=dt_projs_bias.to(dtype).reshape(-1),
        delta_softplus=True,
        backend=backend,
    ).view(b, k, -1, length)
    return cross_merge(out_y.to(dtype), h, w)


def ss2d_core(
    x: torch.Tensor,
    x_proj_weight: torch.Tensor,
    dt_projs_weight: torch.Tensor,
    dt_projs_bias: torch.Tensor,
    A_logs: torch.Tensor,
    Ds: torch.Tensor,
    backend: str = "auto",
) -> torch.Tensor:
    """Run the SS2D core with ``backend``; fused backends get the channels-last activation directly.

    Args:
        x: ``(B, D, H, W)`` activation after the depthwise conv and SiLU (channels-last memory format is
            cheapest for fused backends).
        backend: a selective-scan backend name, or a fused-core backend name (``"triton"``). ``"auto"``
            uses a fused core when one is available for ``x``'s device and is the fastest choice.

    Returns:
        ``(B, H, W, D)`` float32.
    """
    from vmunet_monai.ops.backends import _compiling, _needs_grad, get_backend, resolve_backend_name

    params = (x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds)
    if (_compiling() and x.device.type == "cpu" and not _needs_grad(x, *params)
            and (backend == "auto" or get_backend(backend).fused_core is None)):
        # compiled CPU inference: the backend is resolved when the scan's custom op runs (the availability
        # probes load a C library, which torch.compile cannot trace); fused cores never run on CPU by "auto"
        return ss2d_core_generic(x, *params, backend=backend)
    # "auto" -> the fastest available here (logged once). On CUDA that is the fused triton core for training
    # and inference alike: measured on an H200 (docs/benchmarks.md) VM-UNet trains at 251-292 img/s fp32 / 259-330
    # bf16 eager (312 / 399 as a CUDA-graph step) against mamba_ssm's 143 / 178, and infers at 1,357 / 1,987 as a
    # CUDA graph against 512 / 557 eager, with a deterministic backward.
    name = resolve_backend_name(backend, x)
    fused = get_backend(name).fused_core
    if fused is not None:
        if isinstance(fused, str):  # a plug-in registered as "module:function" (not traceable by torch.compile)
            module_name, func_name = fused.split(":")
            fused = getattr(importlib.import_module(module_name), func_name)
        return fused(x.permute(0, 2, 3, 1).contiguous(), *params)
    return ss2d_core_generic(x, *params, backend=name)


def ss2d_core_norm_gate(
    x: torch.Tensor,
    x_proj_weight: torch.Tensor,
    dt_projs_weight: torch.Tensor,
    dt_projs_bias: torch.Tensor,
    A_logs: torch.Tensor,
    Ds: torch.Tensor,
    backend: str,
    z: torch.Tensor,
    norm_weight: torch.Tensor | None,
    norm_bias: torch.Tensor | None,
    eps: float,
) -> torch.Tensor:
    """``layer_norm(ss2d_core(x, ...)) * silu(z)`` (SS2D's core, ``out_norm`` and gate) with the norm and the gate
    in one Triton kernel; on the ``triton`` core without gradients the four directions are summed in it too.

    Needs ``layer_norm_triton.can_fuse_norm_gate(z, (D,))`` (a CUDA gate, eager mode). Same maths as the modules,
    except where the result is rounded: in ``z``'s dtype, or under autocast in the autocast dtype (the result feeds
    ``out_proj``, which autocast runs in that dtype).

    Args:
        x: ``(B, D, H, W)`` activation after the depthwise conv and SiLU.
        backend: as in :func:`ss2d_core`.
        z: ``(B, H, W, D)`` gate (the second half of ``in_proj``'s output).
        norm_weight, norm_bias, eps: ``out_norm``'s parameters.

    Returns:
        ``(B, H, W, D)``: the gated, normalised core output.
    """
    from vmunet_monai.ops.backends import _needs_grad, resolve_backend_name
    from vmunet_monai.ops.layer_norm_triton import layer_norm_gate, layer_norm_gate_parts

    params = (x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds)
    name = resolve_backend_name(backend, x)
    if name == "triton" and not _needs_grad(x, *params, z, norm_weight, norm_bias):
        from vmunet_monai.ops.ss2d_triton import ss2d_scan_triton_parts

        parts = ss2d_scan_triton_parts(x.permute(0, 2, 3, 1).contiguous(), *params)
        return layer_norm_gate_parts(parts, z, norm_weight, norm_bias, eps)
    y = ss2d_core(x, *params, backend=name)
    return layer_norm_gate(y, z, (y.shape[-1],), norm_weight, norm_bias, eps)


def softplus_inverse(x: torch.Tensor) -> torch.Tensor:
    """Inverse of softplus, used by the published ``dt_init`` so that ``softplus(bias)`` equals ``x``."""
    return x + torch.log(-torch.expm1(-x))


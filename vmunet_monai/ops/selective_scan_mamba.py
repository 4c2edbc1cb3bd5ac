"""The ``mamba_ssm`` backend: mamba_ssm's CUDA selective-scan kernel, imported only when first used."""

from __future__ import annotations

import functools
import importlib.util

import torch

__all__ = ["mamba_ssm_available", "selective_scan_mamba"]


@functools.lru_cache(maxsize=None)
def _mamba_import_error() -> str | None:
    """Why ``mamba_ssm``'s kernel cannot be imported here (None when it can). Tried once per process."""
    if importlib.util.find_spec("mamba_ssm") is None:
        return "the mamba_ssm package is not installed (pip install 'vmunet-monai[cuda]')"
    try:
        importlib.import_module("mamba_ssm.ops.selective_scan_interface")
    except Exception as err:  # mamba_ssm raises ImportError, OSError or RuntimeError when its extension is broken
        return f"importing mamba_ssm.ops.selective_scan_interface failed: {type(err).__name__}: {err}"
    return None


def mamba_ssm_available(x: torch.Tensor | None = None) -> bool:
    """True when mamba_ssm's kernel imports and ``x`` (if given) is a CUDA tensor."""
    if x is not None and x.device.type != "cuda":
        return False
    if not torch.cuda.is_available():
        return False
    return _mamba_import_error() is None


def unavailable_reason(x: torch.Tensor | None = None) -> str:
    """Human-readable reason why :func:`mamba_ssm_available` is False."""
    if x is not None and x.device.type != "cuda":
        return f"mamba_ssm runs on CUDA tensors only (got a {x.device.type} tensor)"
    if not torch.cuda.is_available():
        return "CUDA is not available"
    return _mamba_import_error() or "available"


def selective_scan_mamba(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Call ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn`` (CUDA tensors only).

    Arguments and results as :func:`vmunet_monai.ops.selective_scan_fn`.

    Example::

        >>> y = selective_scan_mamba(u.cuda(), delta.cuda(), A.cuda(), B.cuda(), C.cuda())  # doctest: +SKIP
    """
    if not mamba_ssm_available(u):
        raise RuntimeError(f"selective-scan backend 'mamba_ssm' is not available: {unavailable_reason(u)}.")
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as mamba_selective_scan_fn

    # the kernel wants (batch, channels, L) tensors with a unit last stride
    u, delta = u.contiguous(), delta.contiguous()
    B, C = B.contiguous(), C.contiguous()
    if z is not None:
        z = z.contiguous()
    return mamba_selective_scan_fn(
        u,
        delta,
        A.contiguous(),
        B,
        C,
        D=None if D is None else D.contiguous(),
        z=z,
        delta_bias=None if delta_bias is None else delta_bias.contiguous(),
        delta_softplus=delta_softplus,
        return_last_state=return_last_state,
    )

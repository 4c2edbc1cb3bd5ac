"""The selective scan as a ``torch.library`` custom op, so that ``torch.compile`` compiles whole networks for inference.

Inside ``torch.compile`` the scan backends would be traced: the ``torch`` backend writes into preallocated
buffers with ``out=`` (a graph break), the ``cpu`` backend calls a C kernel through ctypes (a graph break) and
``mamba_ssm`` is an opaque CUDA extension. When no gradient is needed (``torch.no_grad()`` /
``torch.inference_mode()``, or inputs that do not require grad), :func:`selective_scan_fn` therefore routes
through the custom op ``vmunet_monai::selective_scan`` while compiling (``torch.compiler.is_compiling()``, no
gate ``z``, no last state requested); eager calls never see it. The compiler treats the op as one opaque node
(no graph break: ``fullgraph=True`` works) and the backend runs exactly as in eager mode.

Training under ``torch.compile`` keeps the traced path (graph breaks around the scan; the backends' own backward
passes): a custom op cannot run autograd inside itself, and the backends' backward passes are not ops of their own.
The fused ``triton`` core has its own forward and backward custom ops and compiles in both modes.

Example::

    >>> net = torch.compile(VMUNet(spatial_dims=2, in_channels=3, out_channels=1).eval(), fullgraph=True)
    >>> with torch.no_grad():
    ...     logits = net(images)
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor  # module scope: the custom-op schemas are inferred from string annotations

__all__ = ["selective_scan_op"]


def _register():
    custom_op = getattr(getattr(torch, "library", None), "custom_op", None)
    if custom_op is None:  # torch without torch.library.custom_op: the traced path is used when compiling
        return None

    @custom_op("vmunet_monai::selective_scan", mutates_args=())
    def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                       delta_bias: Optional[Tensor], delta_softplus: bool, backend: str) -> Tensor:
        from .backends import selective_scan_fn

        y = selective_scan_fn(u, delta, A, B, C, D=D, delta_bias=delta_bias, delta_softplus=delta_softplus,
                              backend=backend)
        # a custom op's output may not alias an input
        return y.clone() if any(y.data_ptr() == t.data_ptr() for t in (u, delta)) else y

    @selective_scan.register_fake
    def _(u, delta, A, B, C, D, delta_bias, delta_softplus, backend):
        return torch.empty_like(u)

    return selective_scan


# registered at import (registration cannot happen while torch.compile traces); backends.py imports this module
_OP = _register()


def selective_scan_op():
    """The registered op, or None where ``torch.library.custom_op`` is missing (older torch)."""
    return _OP

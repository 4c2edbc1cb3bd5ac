"""``LayerNorm``: ``nn.LayerNorm`` with fused Triton kernels on CUDA (same parameters, state-dict keys and maths)."""

from __future__ import annotations

import torch
from torch import nn

from vmunet_monai.ops.layer_norm_triton import layer_norm

__all__ = ["LayerNorm"]


class LayerNorm(nn.LayerNorm):
    """``torch.nn.LayerNorm`` whose CUDA forward and backward run Triton kernels that normalise tiles of rows.

    VM-UNet normalises (B, H, W, C) activations over C = 24..1536 channels; PyTorch's kernel spends a thread block
    per row there, which made the 38 layer norms of a batch-32 VM-UNet forward take 5.9 ms on an H200 (a quarter
    of the inference time; docs/benchmarks.md). Everything else is ``nn.LayerNorm``: the parameters (``weight``,
    ``bias``), the state-dict keys, CPU execution, ``torch.compile`` / ``torch.export`` tracing (which see
    ``F.layer_norm``) and the fp32 output under autocast. ``VMUNET_TRITON_LAYER_NORM=0`` turns the kernels off.

    Args:
        normalized_shape: size of the last dimension (or a 1-tuple); longer shapes fall back to ``F.layer_norm``.
        eps: added to the variance.
        elementwise_affine: learn ``weight`` and ``bias``.

    Example::

        >>> norm = LayerNorm(96)
        >>> norm(torch.randn(2, 64, 64, 96)).shape
        torch.Size([2, 64, 64, 96])
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

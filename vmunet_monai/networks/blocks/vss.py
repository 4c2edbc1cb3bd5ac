"""Visual state-space (VSS) blocks and the encoder/decoder stages of VM-UNet."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.utils.checkpoint as checkpoint
from monai.networks.layers import DropPath

from vmunet_monai.networks.blocks.layer_norm import LayerNorm
from vmunet_monai.networks.blocks.ss2d import SS2D

__all__ = ["VSSBlock", "VSSLayer", "VSSLayerUp"]


class VSSBlock(nn.Module):
    """``x + DropPath(SS2D(LayerNorm(x)))`` on channels-last tensors; VMamba v0 has no MLP here.

    Args:
        hidden_dim: channels ``C``.
        drop_path: stochastic-depth rate of this block.
        norm_layer: normalisation before SS2D (the published VSSM passes ``nn.LayerNorm``, eps 1e-5).
        d_state: SS2D state size.
        scan_backend: selective-scan backend name.
    """

    def __init__(
        self,
        hidden_dim: int,
        drop_path: float = 0.0,
        norm_layer: type[nn.Module] = LayerNorm,
        d_state: int = 16,
        scan_backend: str = "auto",
    ) -> None:
        super().__init__()
        self.ln_1 = norm_layer(hidden_dim)
        self.self_attention = SS2D(d_model=hidden_dim, d_state=d_state, scan_backend=scan_backend)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.self_attention(self.ln_1(x)))


class _VSSStage(nn.Module):
    """A sequence of VSS blocks with optional gradient checkpointing."""

    def __init__(
        self,
        dim: int,
        depth: int,
        drop_path: Sequence[float] | float,
        norm_layer: type[nn.Module],
        d_state: int,
        scan_backend: str,
        use_checkpoint: bool,
    ) -> None:
        super().__init__()
        rates = list(drop_path) if isinstance(drop_path, Sequence) else [drop_path] * depth
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList(
            [
                VSSBlock(dim, drop_path=rates[i], norm_layer=norm_layer, d_state=d_state, scan_backend=scan_backend)
                for i in range(depth)
            ]
        )

    def _run_blocks(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            if self.use_checkpoint and x.requires_grad:
                x = checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x


class VSSLayer(_VSSStage):
    """Encoder stage: ``depth`` VSS blocks, then an optional downsample (``PatchMerging2D``)."""

    def __init__(
        self,
        dim: int,
        depth: int,
        drop_path: Sequence[float] | float = 0.0,
        norm_layer: type[nn.Module] = LayerNorm,
        downsample: nn.Module | None = None,
        d_state: int = 16,
        scan_backend: str = "auto",
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__(dim, depth, drop_path, norm_layer, d_state, scan_backend, use_checkpoint)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._run_blocks(x)
        return self.downsample(x) if self.downsample is not None else x


class VSSLayerUp(_VSSStage):
    """Decoder stage: an optional upsample (``PatchExpand2D``) first, then ``depth`` VSS blocks."""

    def __init__(
        self,
        dim: int,
        depth: int,
        drop_path: Sequence[float] | float = 0.0,
        norm_layer: type[nn.Module] = LayerNorm,
        upsample: nn.Module | None = None,
        d_state: int = 16,
        scan_backend: str = "auto",
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__(dim, depth, drop_path, norm_layer, d_state, scan_backend, use_checkpoint)
        self.upsample = upsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample is not None:
            x = self.upsample(x)
        return self._run_blocks(x)

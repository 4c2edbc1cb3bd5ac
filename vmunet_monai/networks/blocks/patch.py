"""Patch embedding, merging and expanding layers of VM-UNet (channels-last, published v0 VMamba layout).

Every module here takes and returns ``(B, H, W, C)`` tensors except :class:`PatchEmbed2D`, which takes the
``(B, C, H, W)`` image. Parameter names (``proj``, ``norm``, ``reduction``, ``expand``) are those of the
published implementation so that its checkpoints load strictly.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from vmunet_monai.networks.blocks.layer_norm import LayerNorm

__all__ = ["PatchEmbed2D", "PatchMerging2D", "PatchExpand2D", "FinalPatchExpand2D", "pixel_unshuffle_channels_last"]


def pixel_unshuffle_channels_last(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Rearrange ``(B, H, W, s*s*c)`` into ``(B, s*H, s*W, c)``.

    The channel axis is split as ``(p1, p2, c)`` with ``p1`` (the row offset) slowest, i.e. einops
    ``"b h w (p1 p2 c) -> b (h p1) (w p2) c"``, which is what the published ``PatchExpand2D`` does.
    """
    b, h, w, channels = x.shape
    c = channels // (scale * scale)
    x = x.reshape(b, h, w, scale, scale, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h * scale, w * scale, c)


class PatchEmbed2D(nn.Module):
    """Non-overlapping patch embedding: ``Conv2d(k=s, stride=s)`` then LayerNorm, returned channels-last.

    Args:
        patch_size: side of a square patch (4 in VM-UNet).
        in_chans: image channels.
        embed_dim: output channels.
        norm_layer: normalisation over the channel axis, or ``None``.
    """

    def __init__(
        self, patch_size: int = 4, in_chans: int = 3, embed_dim: int = 96, norm_layer: type[nn.Module] | None = LayerNorm
    ) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = norm_layer(embed_dim) if norm_layer is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x).permute(0, 2, 3, 1)
        return self.norm(x) if self.norm is not None else x


class PatchMerging2D(nn.Module):
    """Halve the resolution and double the width: gather 2x2 neighbours, LayerNorm(4C), Linear(4C -> 2C).

    The neighbours are concatenated in the published order ``[x[0::2,0::2], x[1::2,0::2], x[0::2,1::2],
    x[1::2,1::2]]``; pretrained weights depend on it.

    Args:
        dim: input channels ``C``.
        norm_layer: normalisation applied to the ``4C`` concatenation before the reduction.
    """

    def __init__(self, dim: int, norm_layer: type[nn.Module] = LayerNorm) -> None:
        super().__init__()
        self.dim = dim
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = norm_layer(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0 = x[:, 0::2, 0::2, :]
        x1 = x[:, 1::2, 0::2, :]
        x2 = x[:, 0::2, 1::2, :]
        x3 = x[:, 1::2, 1::2, :]
        x = torch.cat([x0, x1, x2, x3], dim=-1)
        return self.reduction(self.norm(x))


class PatchExpand2D(nn.Module):
    """Double the resolution and halve the width: Linear(2d -> 4d), pixel shuffle by 2, LayerNorm(d).

    ``dim`` is the *output* width ``d`` (the published class is built with the decoder width of its stage).

    Args:
        dim: output channels ``d``; the input has ``2 * dim`` channels.
        dim_scale: upsampling factor (2).
        norm_layer: normalisation over the output channels.
    """

    def __init__(self, dim: int, dim_scale: int = 2, norm_layer: type[nn.Module] = LayerNorm) -> None:
        super().__init__()
        self.dim = dim * 2
        self.dim_scale = dim_scale
        self.expand = nn.Linear(self.dim, dim_scale * self.dim, bias=False)
        self.norm = norm_layer(self.dim // dim_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(pixel_unshuffle_channels_last(self.expand(x), self.dim_scale))


class FinalPatchExpand2D(nn.Module):
    """Final x4 expansion: Linear(d -> 4d), pixel shuffle by 4, LayerNorm(d/4) (published ``Final_PatchExpand2D``).

    Args:
        dim: input channels (96 in VM-UNet); the output has ``dim // dim_scale`` channels.
        dim_scale: upsampling factor (4).
        norm_layer: normalisation over the output channels.
    """

    def __init__(self, dim: int, dim_scale: int = 4, norm_layer: type[nn.Module] = LayerNorm) -> None:
        super().__init__()
        self.dim = dim
        self.dim_scale = dim_scale
        self.expand = nn.Linear(dim, dim_scale * dim, bias=False)
        self.norm = norm_layer(dim // dim_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(pixel_unshuffle_channels_last(self.expand(x), self.dim_scale))

"""VM-UNet: Vision Mamba UNet (Ruan & Xiang, arXiv 2402.02491), published v0 VMamba maths and key layout."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.data import MetaTensor
from monai.networks.layers import trunc_normal_

from vmunet_monai.networks.blocks import FinalPatchExpand2D, PatchEmbed2D, PatchExpand2D, PatchMerging2D, VSSLayer, VSSLayerUp

__all__ = ["VMUNet", "VMUnet"]


class VMUNet(nn.Module):
    """VM-UNet for 2D segmentation.

    Patch embedding (4x4) -> four encoder stages of VSS blocks with patch merging -> four decoder stages with
    patch expanding, additive skips at the lower resolution before each upsample -> final x4 expand and a 1x1
    conv head. Module names and parameter shapes are those of the published ``VSSM`` so that VM-UNet
    checkpoints load strictly (without their ``vmunet.`` prefix; see :mod:`vmunet_monai.weights`).

    The network returns logits, the MONAI convention (apply sigmoid/softmax in the loss and post-processing).
    ``sigmoid_output=True`` reproduces the published behaviour of applying a sigmoid inside the model when there
    is one output channel.

    Args:
        spatial_dims: number of spatial dimensions; only 2 is supported (3D data is processed slice-wise).
        in_channels: input channels. ``1`` (grey, e.g. CT) is repeated to three channels internally as in the
            published code, so ImageNet-pretrained weights apply; ``3`` is RGB; any other count gets its own
            patch-embedding conv.
        out_channels: output channels (classes; 1 for binary segmentation with a sigmoid).
        depths: VSS blocks per encoder stage (paper: 2, 2, 2, 2).
        depths_decoder: VSS blocks per decoder stage, deepest first (paper: 2, 2, 2, 1).
        dims: encoder widths per stage (paper: 96, 192, 384, 768); the decoder uses them reversed.
        d_state: selective-scan state size ``N``.
        drop_path_rate: largest stochastic-depth rate (linear schedule; the decoder's is reversed).
        patch_size: patch-embedding stride.
        scan_backend: selective-scan backend: ``"auto"``, ``"torch"``, ``"cpu"``, ``"reference"``, ``"mamba_ssm"``,
            ``"triton"``, ``"export"`` (see :func:`vmunet_monai.ops.selective_scan_fn`).
        sigmoid_output: apply a sigmoid to the output when ``out_channels == 1`` (published behaviour).
        use_checkpoint: gradient checkpointing of every VSS block (saves memory, costs time).

    Example::

        >>> net = VMUNet(in_channels=3, out_channels=1)
        >>> sum(p.numel() for p in net.parameters())
        27427561
        >>> net(torch.randn(1, 3, 256, 256)).shape
        torch.Size([1, 1, 256, 256])
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 3,
        out_channels: int = 1,
        depths: Sequence[int] = (2, 2, 2, 2),
        depths_decoder: Sequence[int] = (2, 2, 2, 1),
        dims: Sequence[int] = (96, 192, 384, 768),
        d_state: int = 16,
        drop_path_rate: float = 0.2,
        patch_size: int = 4,
        scan_backend: str = "auto",
        sigmoid_output: bool = False,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        if spatial_dims != 2:
            raise NotImplementedError(
                f"VMUNet is a 2D network (spatial_dims=2), got spatial_dims={spatial_dims}; "
                "process 3D volumes slice by slice (e.g. monai.inferers.SliceInferer)."
            )
        if len(depths) != len(dims) or len(depths_decoder) != len(dims):
            raise ValueError(
                f"depths ({len(depths)}), depths_decoder ({len(depths_decoder)}) and dims ({len(dims)}) "
                "must have the same number of stages."
            )
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.sigmoid_output = sigmoid_output
        self.num_layers = len(dims)
        dims = [int(d) for d in dims]
        dims_decoder = dims[::-1]
        # The published model always sees three channels (grey input is repeated).
        embed_channels = 3 if in_channels in (1, 3) else in_channels
        # Each stage halves the resolution except the last; the embedding divides it by patch_size.
        self.size_divisor = patch_size * 2 ** (self.num_layers - 1)

        self.patch_embed = PatchEmbed2D(patch_size=patch_size, in_chans=embed_channels, embed_dim=dims[0])
        self.pos_drop = nn.Dropout(p=0.0)

        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, sum(depths))]
        dpr_decoder = [x.item() for x in torch.linspace(0, drop_path_rate, sum(depths_decoder))][::-1]

        self.layers = nn.ModuleList()
        for i, (dim, depth) in enumerate(zip(dims, depths)):
            self.layers.append(
                VSSLayer(
                    dim=dim,
                    depth=depth,
                    drop_path=dpr[sum(depths[:i]) : sum(depths[: i + 1])],
                    downsample=PatchMerging2D(dim) if i < self.num_layers - 1 else None,
                    d_state=d_state,
                    scan_backend=scan_backend,
                    use_checkpoint=use_checkpoint,
                )
            )
        self.layers_up = nn.ModuleList()
        for i, (dim, depth) in enumerate(zip(dims_decoder, depths_decoder)):
            self.layers_up.append(
                VSSLayerUp(
                    dim=dim,
                    depth=depth,
                    drop_path=dpr_decoder[sum(depths_decoder[:i]) : sum(depths_decoder[: i + 1])],
                    upsample=PatchExpand2D(dim) if i != 0 else None,
                    d_state=d_state,
                    scan_backend=scan_backend,
                    use_checkpoint=use_checkpoint,
                )
            )
        self.final_up = FinalPatchExpand2D(dim=dims_decoder[-1], dim_scale=patch_size)
        self.final_conv = nn.Conv2d(dims_decoder[-1] // patch_size, out_channels, kernel_size=1)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        """Published init: Linear trunc_normal(std .02) with zero bias, LayerNorm (1, 0); convs keep defaults."""
        if isinstance(module, nn.Linear):
            trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.constant_(module.bias, 0)
        elif isinstance(module, nn.LayerNorm):
            nn.init.constant_(module.bias, 0)
            nn.init.constant_(module.weight, 1.0)

    @property
    def scan_backend(self) -> str:
        return self.layers[0].blocks[0].self_attention.scan_backend

    def set_scan_backend(self, backend: str) -> VMUNet:
        """Switch every SS2D to ``backend`` (weights are unchanged); returns ``self``."""
        for module in self.modules():
            if hasattr(module, "scan_backend") and not isinstance(module, VMUNet):
                module.scan_backend = backend
        return self

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4:
            raise ValueError(f"VMUNet expects a (B, C, H, W) tensor, got shape {tuple(x.shape)}.")
        # the three-channel embedding takes grey or RGB input (grey is repeated, as in the published code)
        expected = (1, 3) if self.patch_embed.proj.in_channels == 3 else (self.in_channels,)
        if x.shape[1] not in expected:
            raise ValueError(f"VMUNet(in_channels={self.in_channels}) got {x.shape[1]} input channels.")
        h, w = x.shape[-2:]
        d = self.size_divisor
        if h % d or w % d:
            raise ValueError(
                f"VMUNet needs height and width that are multiples of {d}, got {h}x{w} "
                f"(e.g. resize or pad to {max(d, round(h / d) * d)}x{max(d, round(w / d) * d)})."
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(x, MetaTensor):
            # the scan kernels allocate with tensor methods that MetaTensor overrides; metadata is not needed here
            x = x.as_tensor()
        self._check_input(x)
        if x.shape[1] == 1 and self.patch_embed.proj.in_channels == 3:
            x = x.repeat(1, 3, 1, 1)
        x = self.pos_drop(self.patch_embed(x))
        skips = []
        for layer in self.layers:
            skips.append(x)  # the input of each stage; skips[0] (the embedding) is never used, as published
            x = layer(x)
        for i, layer_up in enumerate(self.layers_up):
            x = layer_up(x) if i == 0 else layer_up(x + skips[-i])
        x = self.final_up(x).permute(0, 3, 1, 2)
        x = self.final_conv(x)
        if self.sigmoid_output and self.out_channels == 1:
            return torch.sigmoid(x)
        return x


VMUnet = VMUNet

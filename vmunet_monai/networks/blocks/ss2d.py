"""SS2D: the 2D selective-scan token mixer of VMamba v0 (published ``SS2D``, reference section 1.4)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from vmunet_monai.networks.blocks.layer_norm import LayerNorm
from vmunet_monai.ops.layer_norm_triton import can_fuse_norm_gate
from vmunet_monai.ops.ss2d import softplus_inverse, ss2d_core, ss2d_core_norm_gate

__all__ = ["SS2D"]


class SS2D(nn.Module):
    """2D selective scan over four directions, with gating, as in VMamba v0.

    ``in_proj`` -> (x, z); x -> depthwise 3x3 conv -> SiLU -> four-direction selective scan (softplus delta with
    bias, ``A = -exp(A_logs)``, skip ``Ds``) summed over directions -> ``out_norm`` -> ``* SiLU(z)`` ->
    ``out_proj``. On CUDA ``out_norm`` and the gate run as one Triton kernel (``VMUNET_TRITON_NORM_GATE=0`` turns
    that off). Parameter names and shapes are the published ones (``x_proj_weight (4, R+2N, D)``,
    ``dt_projs_weight (4, D, R)``, ``dt_projs_bias (4, D)``, ``A_logs (4D, N)``, ``Ds (4D,)``).

    Args:
        d_model: channels ``C`` of the channels-last input.
        d_state: state size ``N``.
        d_conv: depthwise conv kernel size.
        expand: inner width ``D = expand * C``.
        dt_rank: rank ``R`` of the delta projection; ``"auto"`` is ``ceil(C / 16)``.
        dt_min: smallest initial ``softplus(dt_bias)``.
        dt_max: largest initial ``softplus(dt_bias)``.
        dt_init: ``"random"`` (uniform +-R^-0.5 * dt_scale) or ``"constant"`` init of the delta projection.
        dt_scale: scale of the delta projection init.
        dt_init_floor: lower clamp of the initial delta.
        conv_bias: bias in the depthwise conv.
        bias: bias in ``in_proj``/``out_proj``.
        dropout: dropout after ``out_proj``.
        scan_backend: selective-scan backend name (see :func:`vmunet_monai.ops.selective_scan_fn`).

    Example::

        >>> ss2d = SS2D(d_model=8, d_state=4, scan_backend="torch")
        >>> ss2d(torch.randn(2, 4, 4, 8)).shape
        torch.Size([2, 4, 4, 8])
    """

    # parameters that only ever meet activations in the autocast dtype: the core projects the conv output (autocast
    # dtype) with them, casting them to its dtype, like autocast casts a Linear's weight. CUDAGraphModule casts
    # such parameters once per replay in one kernel (same values) instead of one cast per use.
    autocast_cast_parameters = ("x_proj_weight", "dt_projs_weight")

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 3,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        dropout: float = 0.0,
        scan_backend: str = "auto",
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.scan_backend = scan_backend
        num_directions = 4

        self.in_proj = nn.Linear(d_model, self.d_inner * 2, bias=bias)
        self.conv2d = nn.Conv2d(
            self.d_inner,
            self.d_inner,
            kernel_size=d_conv,
            padding=(d_conv - 1) // 2,
            groups=self.d_inner,
            bias=conv_bias,
        )
        self.act = nn.SiLU()

        # The published code builds four nn.Linear(D, R + 2N) and keeps only their stacked weights, so these
        # keep PyTorch's default Linear init (kaiming_uniform(a=sqrt(5)) == U(+-1/sqrt(D))).
        bound = 1.0 / math.sqrt(self.d_inner)
        self.x_proj_weight = nn.Parameter(
            torch.empty(num_directions, self.dt_rank + 2 * d_state, self.d_inner).uniform_(-bound, bound)
        )
        dt_weights, dt_biases = zip(
            *(
                self._dt_init(self.dt_rank, self.d_inner, dt_scale, dt_init, dt_min, dt_max, dt_init_floor)
                for _ in range(num_directions)
            )
        )
        self.dt_projs_weight = nn.Parameter(torch.stack(dt_weights))  # (4, D, R)
        self.dt_projs_bias = nn.Parameter(torch.stack(dt_biases))  # (4, D)
        # S4D-real init, one row per (direction, channel): A_logs[k*D + d] = log(1..N)
        a_log = torch.log(torch.arange(1, d_state + 1, dtype=torch.float32))
        self.A_logs = nn.Parameter(a_log.repeat(num_directions * self.d_inner, 1))
        self.A_logs._no_weight_decay = True  # published flag; the published optimiser ignores it
        self.Ds = nn.Parameter(torch.ones(num_directions * self.d_inner))
        self.Ds._no_weight_decay = True

        self.out_norm = LayerNorm(self.d_inner)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout) if dropout > 0.0 else None

    @staticmethod
    def _dt_init(
        dt_rank: int, d_inner: int, dt_scale: float, dt_init: str, dt_min: float, dt_max: float, dt_init_floor: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Published ``dt_init``: weight U(+-R^-0.5 * scale); bias = softplus^-1(dt), dt log-uniform in [min, max]."""
        std = dt_rank**-0.5 * dt_scale
        weight = torch.empty(d_inner, dt_rank)
        if dt_init == "constant":
            nn.init.constant_(weight, std)
        elif dt_init == "random":
            nn.init.uniform_(weight, -std, std)
        else:
            raise ValueError(f"dt_init must be 'random' or 'constant', got {dt_init!r}.")
        dt = torch.exp(torch.rand(d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        return weight, softplus_inverse(dt)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, C)`` -> ``(B, H, W, C)``."""
        x, z = self.in_proj(x).chunk(2, dim=-1)
        # A permuted view is a channels-last NCHW tensor: the depthwise conv keeps that memory format, so the
        # fused backends can read the result as (B, H, W, D) without a copy.
        x = self.act(self.conv2d(x.permute(0, 3, 1, 2)))
        params = (self.x_proj_weight, self.dt_projs_weight, self.dt_projs_bias, self.A_logs, self.Ds)
        if can_fuse_norm_gate(z, self.out_norm.normalized_shape):
            # CUDA: out_norm and the gate in one Triton kernel (with the triton core at inference, the sum over
            # the four scan directions too); same maths, rounded once in the dtype out_proj runs in
            y = ss2d_core_norm_gate(x, *params, self.scan_backend, z, self.out_norm.weight, self.out_norm.bias,
                                    self.out_norm.eps)
        else:
            y = ss2d_core(x, *params, self.scan_backend)
            # under autocast the published code keeps the float32 scan output through out_norm
            y = self.out_norm(y if torch.is_autocast_enabled(y.device.type) else y.to(z.dtype))
            y = y * F.silu(z)
        out = self.out_proj(y)
        return self.dropout(out) if self.dropout is not None else out

"""The plain sequential selective scan (the ``reference`` backend).

One Python step per time step, written to be read, not to be fast: it is the ground truth that the tests hold the
other backends to. It follows ``mamba_ssm.ops.selective_scan_interface.selective_scan_ref`` (real-valued case).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["selective_scan_reference"]


def selective_scan_reference(
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
    """Sequential selective scan, differentiable through ordinary autograd.

    Per channel ``c`` (group ``g = c // (channels / G)``), with ``dt = softplus(delta + delta_bias)`` (or without the
    softplus), ``h_0 = 0``::

        h_t = exp(dt_t * A_c) * h_{t-1} + dt_t * B_{g,t} * u_t
        y_t = <C_{g,t}, h_t> + D_c * u_t,        out = y * silu(z)  (when z is given)

    Args:
        u: ``(batch, channels, L)``.
        delta: ``(batch, channels, L)``.
        A: ``(channels, N)``.
        B: ``(batch, G, N, L)`` or ``(batch, N, L)`` (one group).
        C: ``(batch, G, N, L)`` or ``(batch, N, L)``.
        D: optional ``(channels,)`` skip weight.
        z: optional ``(batch, channels, L)`` gate.
        delta_bias: optional ``(channels,)`` added to ``delta`` before the softplus.
        delta_softplus: apply softplus to ``delta + delta_bias``.
        return_last_state: also return ``h_L`` ``(batch, channels, N)``.

    Returns:
        ``y`` in ``u``'s dtype (computed in float32, or float64 for float64 input), and ``h_L`` in the compute dtype
        when ``return_last_state``.

    Example::

        >>> u = torch.randn(1, 4, 7); A = -torch.rand(4, 2)
        >>> selective_scan_reference(u, torch.rand(1, 4, 7), A, torch.randn(1, 2, 7), torch.randn(1, 2, 7)).shape
        torch.Size([1, 4, 7])
    """
    dtype_in = u.dtype
    compute = torch.float64 if dtype_in == torch.float64 else torch.float32
    u, delta, A = u.to(compute), delta.to(compute), A.to(compute)
    if B.dim() == 3:
        B = B.unsqueeze(1)
    if C.dim() == 3:
        C = C.unsqueeze(1)
    B, C = B.to(compute), C.to(compute)
    batch, channels, length = u.shape
    groups = B.shape[1]
    if delta_bias is not None:
        delta = delta + delta_bias.to(compute)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    # expand the groups to channels: channel c uses group c // (channels // groups)
    B_c = B.repeat_interleave(channels // groups, dim=1)  # (batch, channels, N, L)
    C_c = C.repeat_interleave(channels // groups, dim=1)
    h = u.new_zeros(batch, channels, A.shape[1])
    ys = []
    for t in range(length):
        dt = delta[:, :, t, None]
        h = torch.exp(dt * A) * h + dt * B_c[:, :, :, t] * u[:, :, t, None]
        ys.append((h * C_c[:, :, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + u * D.to(compute)[:, None]
    if z is not None:
        y = y * F.silu(z.to(compute))
    y = y.to(dtype_in)
    return (y, h) if return_last_state else y

"""Export-friendly selective scan (the ``export`` backend): one ``scan`` higher-order op instead of a Python loop.

Why a separate backend: the ``torch`` backend is a custom ``autograd.Function`` with a Python loop over time and
in-place ``out=`` writes. ``torch.export`` would unroll that loop into thousands of graph nodes per SS2D layer
(``L = H*W/16`` steps at the first stage), and ONNX cannot express the in-place buffers at all. Here the recurrence is
written with :func:`torch._higher_order_ops.scan.scan`: ``torch.export`` keeps it as one ``higher_order.scan`` node
whose body is a single time step, and the ONNX exporter (``torch.onnx.export(..., dynamo=True)``) turns that into one
ONNX ``Scan`` node. So the exported graph is small and independent of the image size, and it computes exactly the
published maths (no approximation, no closed form that could overflow in float32):

    h_t = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t,       y_t = <C_t, h_t> (+ D u_t, * silu(z_t))

The per-step factors ``exp(dt_t A)`` and ``dt_t u_t B_t`` are computed for all steps at once before the scan
(vectorised), so the scan body is one multiply-add and one small matmul.

Use it for export, not for training: it is differentiable through ordinary autograd but slower than ``torch``.

Example::

    >>> import torch
    >>> from vmunet_monai.ops import selective_scan_fn
    >>> u = torch.randn(1, 8, 16); delta = torch.randn(1, 8, 16)
    >>> A = -torch.rand(8, 4); B = torch.randn(1, 2, 4, 16); C = torch.randn(1, 2, 4, 16)
    >>> y = selective_scan_fn(u, delta, A, B, C, D=torch.ones(8), delta_softplus=True, backend="export")
    >>> ref = selective_scan_fn(u, delta, A, B, C, D=torch.ones(8), delta_softplus=True, backend="reference")
    >>> bool(torch.allclose(y, ref, atol=1e-5))
    True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["selective_scan_export", "scan_op_available"]


def _scan_op():
    """The ``scan`` higher-order operator (torch >= 2.6); None when this torch has none.

    The operator itself is used, not the ``torch._higher_order_ops.scan.scan`` wrapper: the wrapper runs every call
    through ``torch.compile`` (seconds per SS2D layer, even inside ``torch.export``), while the operator is traced
    directly by ``torch.export`` and runs as a plain loop in eager mode.
    """
    try:
        from torch._higher_order_ops.scan import scan_op
    except ImportError:  # older torch
        return None
    return scan_op


def scan_op_available(x: torch.Tensor | None = None) -> bool:
    """Whether this torch has the ``scan`` higher-order op the ``export`` backend needs."""
    return _scan_op() is not None


def _step(h: torch.Tensor, decay: torch.Tensor, drive: torch.Tensor, c: torch.Tensor) -> list[torch.Tensor]:
    """One time step: ``h = dA * h + dBu``; ``y = h @ C``. Shapes ``h (b, G, D, N)``, ``C (b, G, N, 1)``.

    Flat calling convention of the scan operator: carries then per-step slices in, ``[carries..., outputs...]`` out.
    """
    h = decay * h + drive
    # the scan op wants outputs that do not alias the carry: the matmul makes a new tensor
    return [h, torch.matmul(h, c)]


def selective_scan_export(
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
    """Selective scan as one ``scan`` op (same arguments and results as :func:`vmunet_monai.ops.selective_scan_fn`).

    Args:
        u: ``(batch, G*D, L)``.
        delta: ``(batch, G*D, L)``.
        A: ``(G*D, N)``.
        B: ``(batch, G, N, L)`` or ``(batch, N, L)``.
        C: ``(batch, G, N, L)`` or ``(batch, N, L)``.
        D: optional ``(G*D,)`` skip weight.
        z: optional ``(batch, G*D, L)`` gate.
        delta_bias: optional ``(G*D,)``.
        delta_softplus: apply softplus to ``delta + delta_bias``.
        return_last_state: also return ``h_L`` ``(batch, G*D, N)``.

    Returns:
        ``y (batch, G*D, L)`` in ``u``'s dtype (float32 compute, float64 for float64 input), and ``h_L`` when
        ``return_last_state``.

    Raises:
        RuntimeError: this torch has no ``scan`` higher-order op (needs torch >= 2.6).

    Example::

        >>> u = torch.randn(1, 4, 7); A = -torch.rand(4, 2)
        >>> selective_scan_export(u, torch.rand(1, 4, 7), A, torch.randn(1, 2, 7), torch.randn(1, 2, 7)).shape
        torch.Size([1, 4, 7])
    """
    scan = _scan_op()
    if scan is None:
        raise RuntimeError(
            f"the 'export' selective-scan backend needs torch's scan higher-order op (torch >= 2.6); this is torch "
            f"{torch.__version__}. Use backend='torch' instead."
        )
    dtype_in = u.dtype
    compute = torch.float64 if dtype_in == torch.float64 else torch.float32
    if B.dim() == 3:
        B = B.unsqueeze(1)
    if C.dim() == 3:
        C = C.unsqueeze(1)
    batch, channels, length = u.shape
    groups, n_state = B.shape[1], A.shape[1]
    d_group = channels // groups
    u_c, delta_c = u.to(compute), delta.to(compute)
    if delta_bias is not None:
        delta_c = delta_c + delta_bias.to(compute)[:, None]
    if delta_softplus:
        delta_c = F.softplus(delta_c)
    # time-major, grouped layouts: the scan runs over the leading dimension
    dt = delta_c.permute(2, 0, 1).reshape(length, batch, groups, d_group, 1)
    du = dt * u_c.permute(2, 0, 1).reshape(length, batch, groups, d_group, 1)
    B_t = B.to(compute).permute(3, 0, 1, 2).unsqueeze(3)  # (L, b, G, 1, N)
    C_t = C.to(compute).permute(3, 0, 1, 2).unsqueeze(-1)  # (L, b, G, N, 1)
    decay = torch.exp(dt * A.to(compute).reshape(groups, d_group, n_state))  # (L, b, G, D, N)
    drive = du * B_t  # (L, b, G, D, N)
    h0 = torch.zeros(batch, groups, d_group, n_state, dtype=compute, device=u.device)
    h_last, ys = scan(_step, [h0], [decay, drive, C_t], additional_inputs=())
    y = ys.reshape(length, batch, channels).permute(1, 2, 0)
    if D is not None:
        y = y + u_c * D.to(compute)[:, None]
    if z is not None:
        y = y * F.silu(z.to(compute))
    y = y.to(dtype_in)
    if return_last_state:
        return y, h_last.reshape(batch, channels, n_state)
    return y

"""The SS2D core: cross-scan order, cross-merge inverse, and the ``auto`` choice."""

from __future__ import annotations

import torch

from vmunet_monai.ops import backends
from vmunet_monai.ops.ss2d import cross_merge, cross_scan


def test_cross_scan_orders_are_the_published_ones():
    x = torch.arange(2 * 3, dtype=torch.float32).view(1, 1, 2, 3)  # [[0, 1, 2], [3, 4, 5]]
    xs = cross_scan(x)[0, :, 0]
    assert xs[0].tolist() == [0, 1, 2, 3, 4, 5]  # row-major
    assert xs[1].tolist() == [0, 3, 1, 4, 2, 5]  # column-major
    assert xs[2].tolist() == [5, 4, 3, 2, 1, 0]
    assert xs[3].tolist() == [5, 2, 4, 1, 3, 0]


def test_cross_merge_maps_every_direction_back():
    x = torch.randn(2, 5, 3, 4)
    merged = cross_merge(cross_scan(x), 3, 4)  # each direction returns to its pixel: 4 x the input, channels last
    torch.testing.assert_close(merged, 4 * x.permute(0, 2, 3, 1))


def test_auto_sends_training_and_inference_to_the_top_ranked_fused_core(monkeypatch):
    """``auto`` has no training special case: the top-ranked backend (triton on CUDA) runs both."""
    from vmunet_monai.ops import ss2d as ss2d_ops

    calls = []
    monkeypatch.setattr(backends, "resolve_backend_name", lambda backend, x: "triton")
    triton_backend = backends.get_backend("triton")
    monkeypatch.setattr(triton_backend, "fused_core", lambda x, *params: calls.append(x.requires_grad) or x)
    d, n, r = 4, 2, 1
    params = (torch.zeros(4, r + 2 * n, d), torch.zeros(4, d, r), torch.zeros(4, d), torch.zeros(4 * d, n),
              torch.zeros(4 * d))
    x = torch.zeros(1, d, 2, 3, requires_grad=True)
    ss2d_ops.ss2d_core(x, *params, backend="auto")
    with torch.no_grad():
        ss2d_ops.ss2d_core(x, *params, backend="auto")
    assert calls == [True, False]
    assert backends.get_backend("triton").priority["cuda"] > backends.get_backend("mamba_ssm").priority["cuda"]

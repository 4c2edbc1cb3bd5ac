"""The SS2D core: cross-scan order, cross-merge inverse, and the ``auto`` choice while training."""

from __future__ import annotations

import torch

from vmunet_monai.ops import backends
from vmunet_monai.ops.ss2d import _prefer_for_training, cross_merge, cross_scan


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


def test_auto_prefers_mamba_ssm_for_training_when_both_exist(monkeypatch):
    mamba = backends.get_backend("mamba_ssm")
    monkeypatch.setattr(mamba, "is_available", lambda x: True)
    x = torch.zeros(1, requires_grad=True)
    assert _prefer_for_training("triton", x) == "mamba_ssm"
    with torch.no_grad():
        assert _prefer_for_training("triton", x) == "triton"
    assert _prefer_for_training("triton", torch.zeros(1)) == "triton"  # inference input
    monkeypatch.setattr(mamba, "is_available", lambda x: False)
    assert _prefer_for_training("triton", x) == "triton"

"""Shared test fixtures: the real data folder beside the repository, small networks, seeding."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_DATA = SHARED / "data"

# Two cores on CI: keep torch from oversubscribing when pytest runs tests in one process.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def shared_path(*parts: str) -> Path:
    """Path under ../shared/data, or skip the test when that real data is not present."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path} (../shared is not beside this checkout)")
    return path


@pytest.fixture
def small_vmunet_kwargs():
    """A tiny VM-UNet configuration for fast end-to-end tests."""
    return dict(dims=(8, 16, 32, 64), depths=(1, 1, 1, 1), depths_decoder=(1, 1, 1, 1), d_state=4)

"""The `vmunet-monai` command line: sub-commands with hyphens or underscores, and per-command help."""

from __future__ import annotations

import subprocess
import sys

import pytest

from vmunet_monai.cli import COMMANDS


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vmunet_monai.cli", *args], capture_output=True, text=True, timeout=120,
                          env={"PAGER": "cat", "PATH": "/usr/bin:/bin"})


def test_every_command_target_exists():
    import importlib

    for name, target in COMMANDS.items():
        module_name, func_name = target.split(":")
        assert callable(getattr(importlib.import_module(module_name), func_name)), name


@pytest.mark.parametrize("command, argument", [("prepare-isic", "SRC"), ("convert_weights", "SRC"), ("stack-synapse", "NPZ_DIR")])
def test_command_help_shows_the_real_signature(command, argument):
    out = _cli(command, "--help")
    assert out.returncode == 0, out.stderr
    assert argument in out.stdout + out.stderr


def test_top_level_help_lists_commands():
    out = _cli("--help")
    assert out.returncode == 0
    assert "prepare_isic" in out.stdout + out.stderr and "benchmark" in out.stdout + out.stderr

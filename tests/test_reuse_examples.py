"""Reuse without the bundle: the documented examples run, in a plain MONAI pipeline.

- Every ```python block of the "Reuse in your own MONAI pipelines" section of docs/ecosystem.md is executed in order
  (one namespace, from the repository root): the examples in the docs cannot rot.
- The docstring examples of the reusable modules (transforms, readers, losses, metrics, inferers, the scan backends)
  run as doctests.
"""

from __future__ import annotations

import doctest
import importlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "ecosystem.md"
SECTION = "## Reuse in your own MONAI pipelines"

# module -> at least this many docstring examples (so that a module that loses its examples fails here)
DOCTEST_MODULES = {
    "vmunet_monai.transforms.isic": 1,
    "vmunet_monai.transforms.synapse": 1,
    "vmunet_monai.losses.bce_dice": 1,
    "vmunet_monai.losses.synapse": 1,
    "vmunet_monai.metrics.isic": 1,
    "vmunet_monai.metrics.synapse": 1,
    "vmunet_monai.data.synapse": 1,
    "vmunet_monai.workflows.inferers": 1,
    "vmunet_monai.workflows.synapse": 1,
    "vmunet_monai.ops.export_scan": 2,
    "vmunet_monai.ops.selective_scan_ref": 1,
    "vmunet_monai.ops.selective_scan_torch": 1,
}


def _reuse_blocks() -> list[str]:
    if not DOC.is_file():
        pytest.skip("docs/ecosystem.md is missing")
    text = DOC.read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    section = text[start : end if end != -1 else None]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_documented_reuse_examples_run(monkeypatch):
    blocks = _reuse_blocks()
    assert len(blocks) >= 4, "the Reuse section lost its examples"
    monkeypatch.chdir(REPO)  # the examples use repository-relative sample paths
    namespace: dict = {"__name__": "ecosystem_examples"}
    for i, block in enumerate(blocks):
        try:
            exec(compile(block, f"{DOC.name} (python block {i + 1})", "exec"), namespace)
        except Exception as err:
            raise AssertionError(f"docs/ecosystem.md python block {i + 1} failed: {err!r}\n{block}") from err


@pytest.mark.parametrize("module_name", sorted(DOCTEST_MODULES))
def test_module_docstring_examples(module_name):
    module = importlib.import_module(module_name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} doctest example(s) of {module_name} failed (run pytest --doctest-modules)"
    assert result.attempted >= DOCTEST_MODULES[module_name], f"{module_name}: expected docstring examples"

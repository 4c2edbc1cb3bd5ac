"""MONAI datalists (decathlon style: ``training`` / ``validation`` / ``test`` keys) for ISIC data.

``dataset_dir`` given to the bundle may be

- a folder holding ``datalist.json`` (written by ``vmunet-monai prepare-isic``, or the embedded sample);
  paths inside are relative to that file;
- an official ISIC 2017/2018 folder, a generic ``images/`` + ``masks/`` folder or the published
  ``train|val/images|masks`` layout: the same seeded split as ``prepare-isic`` is then made in memory.

The validation split (used to select ``models/model.pt``) is always disjoint from the test split,
which fixes the published code's selection on its test data.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from vmunet_monai.data.isic_io import ISICDataError, check_pair, list_image_files
from vmunet_monai.data.isic_layout import find_isic_pairs, split_pairs

__all__ = [
    "DATALIST_NAME",
    "DEFAULT_SEED",
    "DEFAULT_TEST_FRACTION",
    "DEFAULT_VAL_FRACTION",
    "make_isic_splits",
    "read_datalist_json",
    "load_isic_datalist",
    "list_inference_images",
    "validate_entries",
]

DATALIST_NAME = "datalist.json"
DEFAULT_SEED = 42
DEFAULT_TEST_FRACTION = 0.3  # published 7:3 train/test layout
DEFAULT_VAL_FRACTION = 0.15  # of the training part, for checkpoint selection


def make_isic_splits(
    source: str | Path,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    seed: int = DEFAULT_SEED,
    strict: bool = True,
) -> tuple[dict[str, list[tuple[Path, Path]]], list[str], list[Path]]:
    """Seeded ``training``/``validation``/``test`` (+ ``official_*``) splits of the pairs under ``source``.

    Args:
        source: dataset folder in one of the layouts of :mod:`vmunet_monai.data.isic_layout`.
        test_fraction: fraction of the training pairs held out as ``test`` (ignored when the layout
            already has a test folder, i.e. the published ``val/`` folder).
        val_fraction: fraction of the remaining training pairs held out as ``validation``.
        seed: split seed.
        strict: raise on unpaired files; when False they are returned in the problem list.

    Returns:
        (splits, problems, ignored files).
    """
    found = find_isic_pairs(source)
    if found.problems and strict:
        raise ISICDataError(_problem_text(source, found.problems))
    splits: dict[str, list[tuple[Path, Path]]] = {}
    training = found.pairs.get("training", [])
    if "test" in found.pairs:
        splits["test"] = found.pairs["test"]
    else:
        training, splits["test"] = split_pairs(training, test_fraction, seed)
    splits["training"], splits["validation"] = split_pairs(training, val_fraction, seed + 1)
    for key in ("official_validation", "official_test"):
        if found.pairs.get(key):
            splits[key] = found.pairs[key]
    return splits, found.problems, found.ignored


def _problem_text(source: str | Path, problems: list[str], shown: int = 20) -> str:
    lines = "\n  ".join(problems[:shown])
    more = f"\n  ... and {len(problems) - shown} more" if len(problems) > shown else ""
    return f"{source}: {len(problems)} problem(s) in the dataset:\n  {lines}{more}"


def read_datalist_json(path: str | Path) -> dict:
    """Read a decathlon-style datalist and make its ``image``/``label`` paths absolute."""
    path = Path(path)
    try:
        content = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ISICDataError(f"{path}: cannot read datalist ({err})") from None
    base = path.parent
    for key, entries in content.items():
        if isinstance(entries, list) and all(isinstance(e, dict) for e in entries):
            for entry in entries:
                for field in ("image", "label"):
                    if field in entry:
                        entry[field] = str((base / entry[field]).resolve())
    return content


def validate_entries(entries: list[dict], num_workers: int | None = None) -> None:
    """Fully decode and check every ``{"image", "label"}`` entry; raise one error listing all problems."""

    def check(entry: dict) -> str | None:
        try:
            check_pair(entry["image"], entry.get("label"))
        except ISICDataError as err:
            return str(err)
        return None

    workers = num_workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        problems = [p for p in pool.map(check, entries) if p]
    if problems:
        raise ISICDataError(_problem_text("datalist", problems))


def load_isic_datalist(
    dataset_dir: str | Path,
    key: str = "training",
    validate: bool = True,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    seed: int = DEFAULT_SEED,
) -> list[dict]:
    """List of ``{"image": path, "label": path}`` of one split of ``dataset_dir``.

    Args:
        dataset_dir: a folder with ``datalist.json`` or a raw ISIC layout (see the module doc).
        key: ``training``, ``validation``, ``test`` (or ``official_validation``/``official_test``).
        validate: decode every file and check mask binarity and sizes first, so that a bad file gives
            one clear error naming it instead of a traceback from inside a data loader worker.
        test_fraction, val_fraction, seed: split parameters for raw layouts (see :func:`make_isic_splits`).

    Example:
        >>> train_files = load_isic_datalist("bundle/sample_data/isic", "training")  # doctest: +SKIP
    """
    dataset_dir = Path(dataset_dir)
    datalist_file = dataset_dir / DATALIST_NAME if dataset_dir.is_dir() else dataset_dir
    if datalist_file.is_file() and datalist_file.suffix == ".json":
        content = read_datalist_json(datalist_file)
        if key not in content:
            raise ISICDataError(f"{datalist_file}: no '{key}' split (keys: {sorted(content)})")
        entries = content[key]
    else:
        splits, _, _ = make_isic_splits(dataset_dir, test_fraction, val_fraction, seed)
        if key not in splits:
            raise ISICDataError(f"{dataset_dir}: no '{key}' split (splits: {sorted(splits)})")
        entries = [{"image": str(i), "label": str(m)} for i, m in splits[key]]
    if not entries:
        raise ISICDataError(f"{datalist_file}: the '{key}' split is empty")
    if validate:
        validate_entries(entries)
    return entries


def list_inference_images(path: str | Path, validate: bool = True) -> list[dict]:
    """``[{"image": file}]`` for every image (JPEG/PNG/...) in a folder, or for a single image file.

    Raises:
        ISICDataError: missing or empty folder, unreadable or unsupported images (all named).
    """
    path = Path(path)
    files = [path] if path.is_file() else list_image_files(path)
    entries = [{"image": str(p.resolve())} for p in files]
    if validate:
        validate_entries(entries)
    return entries

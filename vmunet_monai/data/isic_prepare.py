"""``vmunet-monai prepare-isic``: official ISIC layouts -> published VM-UNet layout + MONAI datalist.

Output (``out``)::

    train/images/<id>.png  train/masks/<id>.png     # training + validation pairs (published "train")
    val/images/<id>.png    val/masks/<id>.png       # the test split (published code calls it "val")
    official_val/...  official_test/...             # only when the source has those folders
    datalist.json                                   # "training", "validation", "test" (+ official_*) keys
    prepare_report.json                             # counts, seed, ignored and rejected files

Images are resized to ``size`` x ``size`` with bilinear interpolation (the published data are squashed
to 256 x 256), masks with nearest neighbour and written as 0/255; ``size=0`` keeps the original size.
Unpaired files, size mismatches, non-binary masks and unreadable files are reported by name: by default
the command stops with the full list; with ``skip_bad=True`` they are left out and listed in the report.
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from vmunet_monai.data.isic_datalist import (
    DATALIST_NAME,
    DEFAULT_SEED,
    DEFAULT_TEST_FRACTION,
    DEFAULT_VAL_FRACTION,
    _problem_text,
    make_isic_splits,
)
from vmunet_monai.data.isic_io import ISICDataError, read_image_rgb, read_mask_binary

__all__ = ["prepare_isic", "SPLIT_FOLDERS"]

logger = logging.getLogger(__name__)

#: datalist key -> output folder (published names: the test split lives in ``val/``)
SPLIT_FOLDERS = {
    "training": "train",
    "validation": "train",
    "test": "val",
    "official_validation": "official_val",
    "official_test": "official_test",
}


def _convert_pair(image_path: Path, mask_path: Path, folder: Path, size: int) -> dict:
    image = read_image_rgb(image_path)
    mask = read_mask_binary(mask_path)
    if image.shape[:2] != mask.shape:
        raise ISICDataError(
            f"{mask_path}: mask size {mask.shape[1]}x{mask.shape[0]} does not match image {image_path} "
            f"size {image.shape[1]}x{image.shape[0]} (width x height)"
        )
    image_pil = Image.fromarray(image)
    mask_pil = Image.fromarray((mask * 255).astype(np.uint8), mode="L")
    if size:
        image_pil = image_pil.resize((size, size), Image.BILINEAR)
        mask_pil = mask_pil.resize((size, size), Image.NEAREST)
    name = image_path.stem + ".png"
    image_pil.save(folder / "images" / name)
    mask_pil.save(folder / "masks" / name)
    rel = folder.name
    return {"image": f"{rel}/images/{name}", "label": f"{rel}/masks/{name}"}


def prepare_isic(
    src: str,
    out: str,
    size: int = 256,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    seed: int = DEFAULT_SEED,
    skip_bad: bool = False,
    num_workers: int | None = None,
) -> str:
    """Convert an ISIC 2017/2018 download to the published layout and write ``datalist.json``.

    Args:
        src: folder holding the official challenge folders (e.g. ``ISIC-2017_Training_Data`` and
            ``ISIC-2017_Training_Part1_GroundTruth``), ``images/`` + ``masks/``, or ``train|val/images|masks``.
        out: output folder (created).
        size: output side length in pixels (256 as published); 0 keeps the original sizes.
        test_fraction: seeded test fraction of the training pairs (0.3 = the published 7:3 layout;
            0 for no test split).
        val_fraction: seeded validation fraction of the rest, used for checkpoint selection.
        seed: split seed.
        skip_bad: leave out (and report) bad files instead of stopping.
        num_workers: conversion threads (default: CPU count, at most 8).

    Returns:
        the path of the written ``datalist.json``.

    Example:
        ``vmunet-monai prepare-isic --src /data/isic2017 --out /data/isic2017_prepared``
    """
    out_dir = Path(out)
    splits, problems, ignored = make_isic_splits(src, test_fraction, val_fraction, seed, strict=not skip_bad)
    jobs = []
    for key, pairs in splits.items():
        folder = out_dir / SPLIT_FOLDERS[key]
        (folder / "images").mkdir(parents=True, exist_ok=True)
        (folder / "masks").mkdir(parents=True, exist_ok=True)
        jobs.extend((key, image, mask, folder) for image, mask in pairs)

    def run(job):
        key, image, mask, folder = job
        try:
            return key, _convert_pair(image, mask, folder, size), None
        except ISICDataError as err:
            return key, None, str(err)

    workers = num_workers or min(8, os.cpu_count() or 1)
    datalist: dict[str, list] = {key: [] for key in splits}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for key, entry, error in pool.map(run, jobs):
            if error:
                problems.append(error)
            else:
                datalist[key].append(entry)
    if problems and not skip_bad:
        raise ISICDataError(_problem_text(src, problems) + "\n(rerun with --skip_bad True to leave these out)")
    content = {
        "name": "ISIC skin lesion segmentation",
        "source": str(Path(src).resolve()),
        "seed": seed,
        "test_fraction": test_fraction,
        "val_fraction": val_fraction,
        "size": size,
        **datalist,
    }
    datalist_path = out_dir / DATALIST_NAME
    datalist_path.write_text(json.dumps(content, indent=2))
    report = {
        "counts": {key: len(v) for key, v in datalist.items()},
        "rejected": problems,
        "ignored_files": len(ignored),
        "ignored_examples": [str(p) for p in ignored[:10]],
    }
    (out_dir / "prepare_report.json").write_text(json.dumps(report, indent=2))
    counts = ", ".join(f"{k}={v}" for k, v in report["counts"].items())
    print(f"prepare-isic: wrote {datalist_path} ({counts}); ignored {len(ignored)} non-task files; "
          f"rejected {len(problems)} bad file(s)")
    return str(datalist_path)

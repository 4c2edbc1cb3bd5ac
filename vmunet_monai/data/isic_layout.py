"""Discovering image/mask pairs in the ISIC challenge layouts and making seeded splits.

Supported source layouts (folder names as distributed by the challenges):

- ISIC 2017: ``ISIC-2017_Training_Data/ISIC_<id>.jpg`` + ``ISIC-2017_Training_Part1_GroundTruth/ISIC_<id>_segmentation.png``,
  likewise ``ISIC-2017_Validation_*`` and ``ISIC-2017_Test_v2_*``;
- ISIC 2018: ``ISIC2018_Task1-2_Training_Input/*.jpg`` + ``ISIC2018_Task1_Training_GroundTruth/*_segmentation.png``,
  likewise ``Validation`` and ``Test``;
- generic: ``images/`` + ``masks/`` (mask named ``<stem>_segmentation.png`` or ``<stem>.png``);
- the layout of the published VM-UNet code: ``train/images``, ``train/masks``, ``val/images``, ``val/masks``
  (the published "val" folder is the test split).

ISIC 2017 training folders also hold ``*_superpixels.png`` files and licence/attribution text files:
those are not images of the task; they are counted and reported, never paired.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from vmunet_monai.data.isic_io import IMAGE_SUFFIXES, ISICDataError

__all__ = ["ISICPairs", "OFFICIAL_SPLITS", "find_isic_pairs", "split_pairs"]

#: (split name, image folder, mask folder) of the official challenge layouts
OFFICIAL_SPLITS = (
    ("training", "ISIC-2017_Training_Data", "ISIC-2017_Training_Part1_GroundTruth"),
    ("official_validation", "ISIC-2017_Validation_Data", "ISIC-2017_Validation_Part1_GroundTruth"),
    ("official_test", "ISIC-2017_Test_v2_Data", "ISIC-2017_Test_v2_Part1_GroundTruth"),
    ("training", "ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1_Training_GroundTruth"),
    ("official_validation", "ISIC2018_Task1-2_Validation_Input", "ISIC2018_Task1_Validation_GroundTruth"),
    ("official_test", "ISIC2018_Task1-2_Test_Input", "ISIC2018_Task1_Test_GroundTruth"),
    ("training", "images", "masks"),
)
#: the published VM-UNet layout: (split name, folder)
PUBLISHED_SPLITS = (("training", "train"), ("test", "val"))

_IGNORED_NAME = re.compile(r"(_superpixels\.png$)|(\.(txt|csv|md|json)$)", re.IGNORECASE)


@dataclass
class ISICPairs:
    """Pairs found per split, plus everything that could not be paired (reported, never dropped silently)."""

    pairs: dict[str, list[tuple[Path, Path]]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    ignored: list[Path] = field(default_factory=list)
    layout: str = ""


def _mask_stem(mask: Path) -> str:
    stem = mask.stem
    return stem[: -len("_segmentation")] if stem.endswith("_segmentation") else stem


def _pair_folder(image_dir: Path, mask_dir: Path, result: ISICPairs) -> list[tuple[Path, Path]]:
    if not mask_dir.is_dir():
        result.problems.append(f"{mask_dir}: mask folder missing (images are in {image_dir})")
        return []
    images, masks = {}, {}
    for path in sorted(image_dir.iterdir()):
        if not path.is_file():
            continue
        if _IGNORED_NAME.search(path.name) or path.suffix.lower() not in IMAGE_SUFFIXES:
            result.ignored.append(path)
        else:
            images[path.stem] = path
    for path in sorted(mask_dir.iterdir()):
        if not path.is_file():
            continue
        if path.suffix.lower() not in IMAGE_SUFFIXES or _IGNORED_NAME.search(path.name):
            result.ignored.append(path)
        else:
            masks[_mask_stem(path)] = path
    for stem in sorted(set(images) - set(masks)):
        result.problems.append(f"{images[stem]}: no mask (expected {mask_dir / (stem + '_segmentation.png')})")
    for stem in sorted(set(masks) - set(images)):
        result.problems.append(f"{masks[stem]}: mask without an image in {image_dir}")
    return [(images[s], masks[s]) for s in sorted(set(images) & set(masks))]


def find_isic_pairs(source: str | Path) -> ISICPairs:
    """Find image/mask pairs of every split present under ``source`` (see the module doc for layouts).

    Raises:
        ISICDataError: when ``source`` is missing or holds no known layout.
    """
    source = Path(source)
    if not source.is_dir():
        raise ISICDataError(f"{source}: dataset folder not found")
    result = ISICPairs()
    for split, image_name, mask_name in OFFICIAL_SPLITS:
        if (source / image_name).is_dir():
            result.layout = result.layout or ("generic" if image_name == "images" else "official")
            result.pairs.setdefault(split, []).extend(_pair_folder(source / image_name, source / mask_name, result))
    if not result.pairs:
        for split, folder in PUBLISHED_SPLITS:
            if (source / folder / "images").is_dir():
                result.layout = "published"
                result.pairs[split] = _pair_folder(source / folder / "images", source / folder / "masks", result)
    if not result.pairs:
        known = ", ".join(sorted({n for _, n, _ in OFFICIAL_SPLITS} | {"train/images"}))
        raise ISICDataError(f"{source}: no ISIC layout found (expected one of the folders {known})")
    if not any(result.pairs.values()) and not result.problems:
        raise ISICDataError(f"{source}: the image folders hold no image/mask pairs")
    return result


def split_pairs(
    pairs: list[tuple[Path, Path]], fraction: float, seed: int
) -> tuple[list[tuple[Path, Path]], list[tuple[Path, Path]]]:
    """Seeded split of ``pairs`` into (kept, held_out) with ``round(fraction * len)`` held out.

    The split depends only on the sorted file names and the seed, never on the file system order.

    Example:
        >>> kept, held = split_pairs([(Path(f"{i}.jpg"), Path(f"{i}.png")) for i in range(10)], 0.3, seed=42)
        >>> len(kept), len(held)
        (7, 3)
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"split fraction must be in [0, 1), got {fraction}")
    ordered = sorted(pairs, key=lambda p: p[0].name)
    indices = list(range(len(ordered)))
    random.Random(seed).shuffle(indices)
    n_held = int(round(fraction * len(ordered)))
    held = sorted(indices[:n_held])
    kept = sorted(indices[n_held:])
    return [ordered[i] for i in kept], [ordered[i] for i in held]

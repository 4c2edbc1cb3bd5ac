"""MONAI dictionary transforms for ISIC skin-lesion segmentation (VM-UNet recipe).

The published recipe (``vmunet_reference.md`` section 4.1) and how it maps onto MONAI:

===============================  ==============================================================
published (``datasets/dataset.py``)  here
===============================  ==============================================================
``PIL.convert('RGB')`` image      ``LoadImaged(reader="PILReader", converter=to_rgb)`` + :class:`EnsureRGBd`
``convert('L') / 255`` mask       ``LoadImaged(reader="PILReader", converter=to_binary_mask)`` + :class:`BinarizeMaskd`
``myNormalize``                   :class:`MinMaxIntensityd`: per-image min-max over all channels to [0, 255]
                                  (the published mean/std step is a no-op before min-max, so it is left out)
``myRandomHorizontalFlip(0.5)``   ``RandFlipd(spatial_axis=0, prob=0.5)``
``myRandomVerticalFlip(0.5)``     ``RandFlipd(spatial_axis=1, prob=0.5)``
``myRandomRotation(0.5, 0-360)``  ``RandRotated(range_x=(0, 2*pi), prob=0.5, mode="nearest", padding_mode="zeros")``
``myResize(256, 256)``            ``Resized(spatial_size=(256, 256), mode=("bilinear", label_mode))``
===============================  ==============================================================

Deliberate differences (documented choices):

- **Rotation angle drawn per sample.** The published code draws one angle when the config is imported
  and rotates every sample of a run by that same, unseeded angle (a bug). ``RandRotated`` draws a new
  uniform angle in [0, 360) degrees for every rotated sample, from MONAI's seeded generator.
- **Resize first.** The deterministic part (load, RGB, min-max, resize) runs before the random flips
  and rotation, so that ``CacheDataset`` caches resized images and each epoch only pays for the cheap
  random part. On the 256 x 256 challenge data as published this is identical; on original-size images
  the rotation then happens on the squashed 256 x 256 image.
- **Mask resize.** ``label_mode="bilinear"`` (the default) is the published behaviour: the resized mask
  is soft in [0, 1] and is the BCE/Dice target; metrics threshold it at 0.5 like the paper.
  ``label_mode="nearest"`` keeps a hard {0, 1} mask.
- MONAI's ``PILReader`` stores images as (C, W, H) ("reverse indexing"): ``spatial_axis=0`` is the
  horizontal axis. Both flips have the same probability, so this only matters for naming.

All transforms take ``keys`` and work on MONAI ``MetaTensor`` s; the spatial ones are MONAI's own, so
``Invertd`` restores predictions to the original image size.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    RandFlipd,
    RandRotated,
    Resized,
    ScaleIntensityd,
)

from vmunet_monai.data.isic_io import to_binary_mask, to_rgb

__all__ = [
    "EnsureRGBd",
    "BinarizeMaskd",
    "MinMaxIntensityd",
    "isic_load_transforms",
    "isic_deterministic_transforms",
    "isic_random_transforms",
    "isic_train_transforms",
    "isic_eval_transforms",
]


class EnsureRGBd(MapTransform):
    """Make channel-first images three-channel: gray is repeated, the alpha channel (4th / 2nd) is dropped.

    Args:
        keys: keys of the images to convert.
        allow_missing_keys: don't raise when a key is missing.

    Example:
        >>> out = EnsureRGBd(keys="image")({"image": torch.rand(4, 8, 8)})
        >>> out["image"].shape
        torch.Size([3, 8, 8])
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            channels = image.shape[0]
            if channels in (1, 2):  # gray or gray + alpha
                d[key] = image[:1].repeat(3, *([1] * (image.ndim - 1)))
            elif channels == 4:  # RGBA: alpha carries no lesion information
                d[key] = image[:3]
            elif channels != 3:
                raise ValueError(f"EnsureRGBd: '{key}' has {channels} channels; expected 1 to 4 (channel first)")
        return d


class BinarizeMaskd(MapTransform):
    """Turn a channel-first lesion mask into one float channel with values {0, 1} (lesion = value > threshold).

    Works for 0/255, 0/1 and 16-bit 0/65535 masks; a multi-channel (gray-as-RGB) mask uses its first channel.

    Args:
        keys: keys of the masks.
        threshold: values strictly above it are lesion.
        allow_missing_keys: don't raise when a key is missing.

    Example:
        >>> out = BinarizeMaskd(keys="label")({"label": torch.tensor([[[0, 255], [255, 0]]])})
        >>> out["label"].tolist()
        [[[0.0, 1.0], [1.0, 0.0]]]
    """

    def __init__(self, keys: KeysCollection, threshold: float = 0.0, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.threshold = threshold

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = (d[key][:1] > self.threshold).to(torch.float32)
        return d


class MinMaxIntensityd(ScaleIntensityd):
    """Published ISIC intensity handling: per-image min-max over all channels jointly to [minv, maxv].

    The published ``myNormalize`` subtracts a dataset mean, divides by a std and then min-max scales
    each image to [0, 255]; a positive affine map followed by min-max is the identity, so only the
    min-max remains. The network therefore sees values in [0, 255] (no /255, no ImageNet statistics).

    Args:
        keys: keys of the images.
        minv: output minimum (published 0).
        maxv: output maximum (published 255).
        allow_missing_keys: don't raise when a key is missing.
    """

    def __init__(self, keys: KeysCollection, minv: float = 0.0, maxv: float = 255.0, allow_missing_keys: bool = False):
        super().__init__(keys, minv=minv, maxv=maxv, channel_wise=False, allow_missing_keys=allow_missing_keys)


def isic_load_transforms(image_key: str = "image", label_key: str | None = "label") -> list:
    """Load an RGB image (alpha dropped, gray replicated) and, if ``label_key``, a binary mask, channel first."""
    transforms = [
        LoadImaged(keys=image_key, reader="PILReader", converter=to_rgb, image_only=True),
        EnsureChannelFirstd(keys=image_key, channel_dim=-1),
        EnsureRGBd(keys=image_key),
    ]
    if label_key:
        transforms += [
            LoadImaged(keys=label_key, reader="PILReader", converter=to_binary_mask, image_only=True),
            EnsureChannelFirstd(keys=label_key, channel_dim="no_channel"),
            BinarizeMaskd(keys=label_key),
        ]
    return transforms


def isic_deterministic_transforms(
    image_size: int | Sequence[int] = 256,
    image_key: str = "image",
    label_key: str | None = "label",
    label_mode: str = "bilinear",
) -> list:
    """Load, RGB, min-max to [0, 255] and resize (cacheable part of the train and evaluation pipelines)."""
    size = [image_size, image_size] if isinstance(image_size, int) else list(image_size)
    keys = [image_key] + ([label_key] if label_key else [])
    modes = ["bilinear"] + ([label_mode] if label_key else [])
    return isic_load_transforms(image_key, label_key) + [
        MinMaxIntensityd(keys=image_key),
        Resized(keys=keys, spatial_size=size, mode=modes),
        EnsureTyped(keys=keys, dtype=torch.float32),
    ]


def isic_random_transforms(keys: Sequence[str] = ("image", "label"), prob: float = 0.5) -> list:
    """Published augmentation: flips along both axes and a 0-360 degree rotation, each with ``prob``."""
    keys = list(keys)
    return [
        RandFlipd(keys=keys, spatial_axis=0, prob=prob),
        RandFlipd(keys=keys, spatial_axis=1, prob=prob),
        RandRotated(
            keys=keys,
            range_x=(0.0, 2 * math.pi),
            prob=prob,
            mode="nearest",
            padding_mode="zeros",
            keep_size=True,
        ),
    ]


def isic_train_transforms(image_size: int = 256, label_mode: str = "bilinear") -> Compose:
    """Complete training pipeline on ``{"image": path, "label": path}`` dictionaries.

    Example:
        >>> from monai.data import Dataset
        >>> ds = Dataset([{"image": "a.jpg", "label": "a_segmentation.png"}], isic_train_transforms(256))  # doctest: +SKIP
    """
    return Compose(isic_deterministic_transforms(image_size, label_mode=label_mode) + isic_random_transforms())


def isic_eval_transforms(image_size: int = 256, with_label: bool = True, label_mode: str = "bilinear") -> Compose:
    """Evaluation/inference pipeline (deterministic; invert predictions with ``Invertd``)."""
    return Compose(isic_deterministic_transforms(image_size, label_key="label" if with_label else None, label_mode=label_mode))

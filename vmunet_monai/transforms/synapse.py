"""Synapse training transforms: the published ``RandomGenerator`` (reference 4.2) as MONAI transforms.

Published, per 2D slice (numpy/scipy):

- p = 0.5: ``np.rot90`` by k in {0, 1, 2, 3}, then a flip along a random axis (always);
- else p = 0.5 (0.25 overall): rotation by an integer angle in [-20, 19] degrees, nearest neighbour for image
  *and* label, constant 0 outside, same size;
- else (0.25): nothing;
- then zoom to 224 x 224 (image spline order 3, label nearest); output image (1, 224, 224), label long.

MONAI equivalents: ``RandRotate90d(prob=0.75, max_k=3)`` (k = 0 with p 0.25, else 1..3 uniformly: k uniform in
0..3), ``RandAxisFlipd(prob=1)``, ``RandRotated(range_x=20 deg, mode=nearest, padding zeros)`` and ``Resized``
(bicubic image / nearest label). Differences: the angle is continuous in [-20, 20] instead of an integer in
[-20, 19], and torch bicubic interpolation replaces scipy's order-3 spline zoom.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    Randomizable,
    RandAxisFlipd,
    RandRotate90d,
    RandRotated,
    Resized,
    ScaleIntensityRanged,
)

from vmunet_monai.data.synapse import HU_WINDOW, SynapseNpzReader

__all__ = [
    "RandSynapseAugmentd",
    "synapse_train_transforms",
    "synapse_slice_transforms",
    "CTWindowd",
]

SYNAPSE_SIZE = 224


class RandSynapseAugmentd(Randomizable, MapTransform):
    """The published Synapse augmentation (rot90 + flip, or a small rotation, or nothing) on 2D slices.

    All keys get the same random parameters. Image and label are both rotated with nearest neighbour, as published.

    Args:
        keys: keys of channel-first 2D arrays ``(C, H, W)`` (image and label).
        rot_flip_prob: probability of the rot90 + flip branch (published 0.5).
        rotate_prob: probability of the rotation branch when rot90 + flip was not taken (published 0.5).
        max_angle: rotation range in degrees, symmetric (published 20).
        mode: interpolation per key for the rotation (published nearest for both).
        allow_missing_keys: do not raise for missing keys.

    Example:
        >>> import torch
        >>> aug = RandSynapseAugmentd(["image", "label"]).set_random_state(0)
        >>> out = aug({"image": torch.rand(1, 8, 8), "label": torch.zeros(1, 8, 8)})
        >>> out["image"].shape
        torch.Size([1, 8, 8])
    """

    def __init__(
        self,
        keys: KeysCollection,
        rot_flip_prob: float = 0.5,
        rotate_prob: float = 0.5,
        max_angle: float = 20.0,
        mode: Sequence[str] | str = "nearest",
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        if not (0 <= rot_flip_prob <= 1 and 0 <= rotate_prob <= 1):
            raise ValueError(f"probabilities must lie in [0, 1], got {rot_flip_prob}, {rotate_prob}.")
        self.rot_flip_prob = rot_flip_prob
        self.rotate_prob = rotate_prob
        # k = 0 with p 0.25, else k in 1..3 uniformly: k uniform over {0, 1, 2, 3} as np.random.randint(0, 4)
        self.rot90 = RandRotate90d(keys, prob=0.75, max_k=3, allow_missing_keys=allow_missing_keys)
        self.flip = RandAxisFlipd(keys, prob=1.0, allow_missing_keys=allow_missing_keys)
        self.rotate = RandRotated(
            keys,
            range_x=float(np.deg2rad(max_angle)),
            prob=1.0,
            keep_size=True,
            mode=mode,
            padding_mode="zeros",
            allow_missing_keys=allow_missing_keys,
        )
        self._branch = "none"

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        for t in (self.rot90, self.flip, self.rotate):  # one shared stream: reproducible from one seed
            t.set_random_state(state=self.R)
        return self

    def randomize(self, data: Any = None) -> None:
        if self.R.rand() < self.rot_flip_prob:
            self._branch = "rot_flip"
        elif self.R.rand() < self.rotate_prob:
            self._branch = "rotate"
        else:
            self._branch = "none"

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        self.randomize()
        d = dict(data)
        if self._branch == "rot_flip":
            d = self.flip(self.rot90(d))
        elif self._branch == "rotate":
            d = self.rotate(d)
        return d


class CTWindowd(ScaleIntensityRanged):
    """Clip CT to the training window [-125, 275] HU and scale to [0, 1] (reference 4.2), as ``ScaleIntensityRanged``.

    Example:
        >>> import torch
        >>> CTWindowd("image")({"image": torch.tensor([[-1000.0, 75.0, 3000.0]])})["image"].tolist()
        [[0.0, 0.5, 1.0]]
    """

    def __init__(self, keys: KeysCollection, window: Sequence[float] = HU_WINDOW, allow_missing_keys: bool = False):
        super().__init__(
            keys, a_min=float(window[0]), a_max=float(window[1]), b_min=0.0, b_max=1.0, clip=True,
            allow_missing_keys=allow_missing_keys,
        )


def synapse_slice_transforms(spatial_size: int | Sequence[int] = SYNAPSE_SIZE, load: bool = True) -> list:
    """Deterministic part for npz slices: load image/label, add a channel, resize (bicubic / nearest)."""
    size = (spatial_size, spatial_size) if isinstance(spatial_size, int) else tuple(spatial_size)
    loads = (
        [LoadImaged("image", reader=SynapseNpzReader("image")), LoadImaged("label", reader=SynapseNpzReader("label"))]
        if load
        else []
    )
    return loads + [
        EnsureChannelFirstd(["image", "label"], channel_dim="no_channel"),
        Resized(["image", "label"], spatial_size=size, mode=("bicubic", "nearest")),
        EnsureTyped(["image", "label"], track_meta=False),
    ]


def synapse_train_transforms(spatial_size: int | Sequence[int] = SYNAPSE_SIZE, load: bool = True) -> Compose:
    """The published training pipeline for npz slices: load, channel, augment, resize to ``spatial_size``.

    Augmentation happens at the stored resolution (512) before the resize, as in ``RandomGenerator``.

    Example:
        >>> from monai.data import Dataset
        >>> ds = Dataset([{"image": "case0031_slice050.npz", "label": "case0031_slice050.npz"}],
        ...              synapse_train_transforms(224))  # doctest: +SKIP
    """
    steps = synapse_slice_transforms(spatial_size, load)
    # insert the augmentation right after EnsureChannelFirstd, before the resize
    pos = 3 if load else 1
    steps.insert(pos, RandSynapseAugmentd(["image", "label"]))
    return Compose(steps)

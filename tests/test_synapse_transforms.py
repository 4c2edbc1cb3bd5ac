"""Synapse training transforms (published RandomGenerator as MONAI transforms), CT window, CE + Dice loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.conftest import shared_path
from vmunet_monai.losses.synapse import SynapseCEDiceLoss
from vmunet_monai.transforms.synapse import CTWindowd, RandSynapseAugmentd, synapse_train_transforms


def _published_ce_dice(logits: torch.Tensor, target: torch.Tensor, w_ce: float, w_dice: float) -> torch.Tensor:
    """VM-UNet ``CeDiceLoss`` written out: CE + nDiceLoss (softmax, one-hot incl. background, batch-wise, squared)."""
    ce = F.cross_entropy(logits, target.long())
    p = torch.softmax(logits, dim=1)
    t = F.one_hot(target.long(), logits.shape[1]).permute(0, 3, 1, 2).float()
    dice = 0.0
    for c in range(logits.shape[1]):
        inter = (p[:, c] * t[:, c]).sum()
        dice += 1 - (2 * inter + 1e-5) / ((p[:, c] ** 2).sum() + (t[:, c] ** 2).sum() + 1e-5)
    return w_ce * ce + w_dice * dice / logits.shape[1]


@pytest.mark.parametrize("w_ce, w_dice", [(0.4, 0.6), (1.0, 1.0)])
def test_loss_matches_published_formula(w_ce, w_dice):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 9, 16, 16, generator=g)
    target = torch.randint(0, 9, (3, 16, 16), generator=g)
    ours = SynapseCEDiceLoss(lambda_ce=w_ce, lambda_dice=w_dice)
    expected = _published_ce_dice(logits, target, w_ce, w_dice)
    assert ours(logits, target[:, None].float()).item() == pytest.approx(expected.item(), rel=1e-5)
    assert ours(logits, target).item() == pytest.approx(expected.item(), rel=1e-5)  # (B, H, W) labels too


def test_loss_rejects_wrong_channels():
    with pytest.raises(ValueError, match="9 channels"):
        SynapseCEDiceLoss()(torch.randn(1, 2, 8, 8), torch.zeros(1, 1, 8, 8))


def test_ct_window_transform():
    d = CTWindowd("image")({"image": torch.tensor([[[-1000.0, -125.0, 75.0, 275.0, 1500.0]]])})
    np.testing.assert_allclose(d["image"].numpy().ravel(), [0, 0, 0.5, 1, 1], atol=1e-6)


def test_augmentation_keeps_image_and_label_aligned():
    """Image = label values: with nearest interpolation for both (as published), they stay identical."""
    lab = torch.zeros(1, 32, 32)
    lab[0, 4:12, 6:20] = 3
    lab[0, 20:28, 2:9] = 7
    aug = RandSynapseAugmentd(["image", "label"])
    aug.set_random_state(0)
    branches = set()
    for _ in range(40):
        out = aug({"image": lab.clone(), "label": lab.clone()})
        branches.add(aug._branch)
        assert out["image"].shape == (1, 32, 32)
        np.testing.assert_array_equal(np.asarray(out["image"]), np.asarray(out["label"]))
        assert set(np.unique(np.asarray(out["label"]))) <= {0.0, 3.0, 7.0}
    assert branches == {"rot_flip", "rotate", "none"}


def test_augmentation_branch_frequencies():
    aug = RandSynapseAugmentd(["image"])
    aug.set_random_state(123)
    counts = {"rot_flip": 0, "rotate": 0, "none": 0}
    for _ in range(2000):
        aug.randomize()
        counts[aug._branch] += 1
    assert abs(counts["rot_flip"] / 2000 - 0.5) < 0.05
    assert abs(counts["rotate"] / 2000 - 0.25) < 0.05
    assert abs(counts["none"] / 2000 - 0.25) < 0.05


def test_rotation_stays_within_20_degrees():
    """A single pixel at radius 12 from the centre moves along an arc of at most 20 degrees."""
    img = torch.zeros(1, 33, 33)
    img[0, 16, 28] = 1  # angle 0 at radius 12
    aug = RandSynapseAugmentd(["image"], rot_flip_prob=0.0, rotate_prob=1.0)
    aug.set_random_state(5)
    angles = []
    for _ in range(30):
        out = np.asarray(aug({"image": img.clone()})["image"])[0]
        ys, xs = np.nonzero(out)
        if len(ys):
            angles.append(np.degrees(np.arctan2(ys.mean() - 16, xs.mean() - 16)))
    assert len(angles) > 20 and max(abs(a) for a in angles) <= 23  # 20 deg + pixel rounding
    assert max(abs(a) for a in angles) > 5  # it does rotate


def test_train_pipeline_on_real_slice():
    f = str(shared_path("synapse", "train_npz", "case0031_slice050.npz"))
    t = synapse_train_transforms(64)
    t.set_random_state(0)
    for _ in range(3):
        d = t({"image": f, "label": f})
        assert tuple(d["image"].shape) == (1, 64, 64) and tuple(d["label"].shape) == (1, 64, 64)
        assert set(torch.unique(d["label"]).tolist()) <= set(range(9))

"""ISIC metric (hand-computed confusion matrices, empty masks), BCE+Dice loss, transforms."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from PIL import Image

from vmunet_monai.handlers import ISICMetricHandler
from vmunet_monai.losses import BceDiceLoss
from vmunet_monai.metrics import ISICMetric, confusion_counts, isic_scores
from vmunet_monai.transforms import BinarizeMaskd, EnsureRGBd, isic_eval_transforms, isic_random_transforms

SAMPLE = Path(__file__).resolve().parents[1] / "bundle" / "sample_data" / "isic"


def _t(rows):
    return torch.tensor(rows, dtype=torch.float32)[None, None]


# two 2x2 images; image 2 has empty truth and empty prediction
PRED_1, TRUE_1 = _t([[1, 0], [1, 1]]), _t([[1, 0], [0, 1]])  # TP 2, FP 1, FN 0, TN 1
PRED_2, TRUE_2 = _t([[0, 0], [0, 0]]), _t([[0, 0], [0, 0]])  # TN 4


def test_metric_matches_hand_computed_confusion_matrix():
    metric = ISICMetric()
    metric(PRED_1, TRUE_1)
    metric(PRED_2, TRUE_2)
    assert metric.confusion_matrix().tolist() == [5.0, 1.0, 0.0, 2.0]  # TN, FP, FN, TP over all 8 pixels
    scores = metric.aggregate()
    assert scores["dsc"] == pytest.approx(4 / 5)  # 2TP / (2TP + FP + FN)
    assert scores["miou"] == pytest.approx(2 / 3)  # TP / (TP + FP + FN): foreground IoU
    assert scores["accuracy"] == pytest.approx(7 / 8)
    assert scores["sensitivity"] == pytest.approx(1.0)
    assert scores["specificity"] == pytest.approx(5 / 6)
    # pooled, not averaged per image: the per-image mean Dice here would be (0.8 + undefined) / ...
    batch = ISICMetric("dsc")
    batch(torch.cat([PRED_1, PRED_2]), torch.cat([TRUE_1, TRUE_2]))
    assert batch.aggregate() == pytest.approx(0.8)


def test_metric_zero_denominators_give_zero():
    metric = ISICMetric()
    metric(PRED_2, TRUE_2)  # everything empty: no positives at all
    assert metric.aggregate() == {"miou": 0.0, "dsc": 0.0, "accuracy": 1.0, "sensitivity": 0.0, "specificity": 1.0}
    all_fg = ISICMetric()
    all_fg(torch.ones(1, 1, 2, 2), torch.ones(1, 1, 2, 2))  # TN + FP = 0 -> specificity 0
    assert all_fg.aggregate()["specificity"] == 0.0 and all_fg.aggregate()["dsc"] == 1.0
    assert ISICMetric().aggregate()["dsc"] == 0.0  # nothing seen


def test_threshold_is_inclusive_half_on_soft_truth():
    counts = confusion_counts(_t([[0.5, 0.49]]), _t([[0.5, 0.5]]))  # GT soft 0.5 counts as lesion
    assert counts.tolist() == [[0.0, 0.0, 1.0, 1.0]]  # TP 1 (0.5 >= 0.5), FN 1 (0.49 < 0.5)
    assert isic_scores([0, 0, 1, 1])["sensitivity"] == 0.5


def test_ignite_handler_accumulates_over_iterations():
    batches = [{"pred": PRED_1, "label": TRUE_1}, {"pred": PRED_2, "label": TRUE_2}]
    engine = Engine(lambda e, b: ([{"pred": b["pred"][0], "label": b["label"][0]}]))
    ISICMetricHandler("miou").attach(engine, "miou")
    ISICMetricHandler("specificity").attach(engine, "spec")
    engine.run(batches, max_epochs=1)
    assert engine.state.metrics["miou"] == pytest.approx(2 / 3)
    assert engine.state.metrics["spec"] == pytest.approx(5 / 6)
    with pytest.raises(ValueError, match="metric_name"):
        ISICMetric("f1")


def _published_bce_dice(prob: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The published BceDiceLoss(wb=1, wd=1) on probabilities (vmunet_reference.md 4.1), per-sample Dice."""
    b = prob.shape[0]
    p, t = prob.reshape(b, -1), target.reshape(b, -1)
    bce = torch.nn.BCELoss()(p, t)
    dice = (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)
    return bce + (1 - dice.sum() / b)


def test_bce_dice_matches_published_formula_on_logits():
    torch.manual_seed(0)
    logits = torch.randn(3, 1, 8, 8) * 3
    target = (torch.rand(3, 1, 8, 8) > 0.6).float()
    target[2] = torch.rand(1, 8, 8)  # soft target (bilinear-resized masks are soft)
    loss = BceDiceLoss()
    assert loss(logits, target).item() == pytest.approx(_published_bce_dice(torch.sigmoid(logits), target).item(), rel=1e-5)
    # hand value: zero logits, all-ones 4x4 targets -> log 2 + 1 - (2*8+1)/(8+16+1)
    assert loss(torch.zeros(2, 1, 4, 4), torch.ones(2, 1, 4, 4)).item() == pytest.approx(math.log(2) + 1 - 17 / 25, rel=1e-6)
    # per-sample Dice differs from a batch-pooled Dice when samples differ
    pooled = 1 - (2 * (torch.sigmoid(logits) * target).sum() + 1) / (torch.sigmoid(logits).sum() + target.sum() + 1)
    per_sample = loss(logits, target) - F.binary_cross_entropy_with_logits(logits, target)
    assert abs(per_sample.item() - pooled.item()) > 1e-4
    assert torch.isfinite(BceDiceLoss()(torch.full((1, 1, 2, 2), 200.0), torch.zeros(1, 1, 2, 2)))  # no log(0)
    with pytest.raises(ValueError, match="shape"):
        loss(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 2, 2))


def test_rotation_angle_is_drawn_per_sample():
    rotate = isic_random_transforms(prob=1.0)[-1]  # RandRotated, p=1 for the test
    rotate.set_random_state(0)
    image = torch.zeros(1, 33, 33)
    image[0, 16, 16:] = 1.0  # a ray from the centre to the right: its angle shows the rotation
    angles = []
    for _ in range(4):
        out = rotate({"image": image.clone(), "label": image.clone()})
        angles.append(float(rotate.rand_rotate.x))
        assert torch.equal(out["image"].as_tensor(), out["label"].as_tensor())  # same angle for image and mask
    assert len({round(a, 6) for a in angles}) == 4  # a new angle every sample (published: one angle per run)
    assert all(0.0 <= a < 2 * math.pi for a in angles)


def test_eval_transforms_on_real_sample_and_inversion(tmp_path):
    image_path = sorted((SAMPLE / "images").glob("*.jpg"))[0]
    mask_path = SAMPLE / "masks" / (image_path.stem + "_segmentation.png")
    wide = tmp_path / "wide.png"
    Image.open(image_path).convert("RGBA").resize((96, 64)).save(wide)  # RGBA, non-square
    wide_mask = tmp_path / "wide_mask.png"
    Image.open(mask_path).resize((96, 64), Image.NEAREST).save(wide_mask)
    transforms = isic_eval_transforms(32)
    out = transforms({"image": str(wide), "label": str(wide_mask)})
    assert out["image"].shape == (3, 32, 32) and out["label"].shape == (1, 32, 32)
    assert out["image"].min() >= 0 and out["image"].max() <= 255 and out["image"].max() > 200  # min-max to [0,255]
    assert 0 < out["label"].mean() < 1
    from monai.transforms import Invertd

    out["pred"] = out["label"].clone()
    restored = Invertd(keys="pred", transform=transforms, orig_keys="image", nearest_interp=True)(out)
    assert restored["pred"].shape == (1, 96, 64)  # (C, W, H) as MONAI's PILReader stores it


def test_rgb_and_binarize_transforms():
    out = EnsureRGBd(keys=["a", "b"])({"a": torch.rand(1, 4, 4), "b": torch.rand(4, 4, 4)})
    assert out["a"].shape == (3, 4, 4) and torch.equal(out["a"][0], out["a"][2])
    assert out["b"].shape == (3, 4, 4)
    mask = BinarizeMaskd(keys="m")({"m": torch.tensor([[[0, 65535], [1, 0]]], dtype=torch.int32)})["m"]
    assert mask.dtype == torch.float32 and mask.tolist() == [[[0.0, 1.0], [1.0, 0.0]]]
    with pytest.raises(ValueError, match="5 channels"):
        EnsureRGBd(keys="a")({"a": torch.rand(5, 2, 2)})


def test_latest_checkpointer_interval(tmp_path):
    """Every `interval` epochs and after the last one; a resumed run reads the epoch it was written at."""
    from vmunet_monai.handlers import LatestCheckpointer

    net = torch.nn.Linear(2, 1)
    saved = []
    handler = LatestCheckpointer(str(tmp_path), {"model": net}, interval=2)
    engine = Engine(lambda e, b: None)
    handler.attach(engine)

    @engine.on(Events.EPOCH_COMPLETED)
    def record(e):
        path = tmp_path / "latest.pt"
        saved.append(torch.load(path, weights_only=True)["trainer"]["epoch"] if path.exists() else None)

    engine.run([0], max_epochs=5)
    assert saved == [None, 2, 2, 4, 5]
    with pytest.raises(ValueError, match="positive"):
        LatestCheckpointer(str(tmp_path), {"model": net}, interval=0)

"""Per-organ Dice / HD95 against hand-computed values, both empty-mask rules, anisotropic spacing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vmunet_monai.metrics.synapse import organ_metrics, summarize_organ_metrics, summary_table_markdown


def _one(pred, truth, **kw):
    return organ_metrics(pred, truth, organs=["organ"], **kw)[0]


def _two_voxel_pair():
    """truth = voxels z=2,3; prediction = z=3,4 on one line (every voxel is a surface voxel).

    Dice = 2*1/(2+2) = 0.5. Surface distances (voxels): pred->truth [0, 1], truth->pred [1, 0]; the linear
    95th percentile of [0, 1] is 0.95 in both directions, so HD95 = 0.95 voxel = 0.95 * spacing_z mm.
    """
    truth = np.zeros((6, 6, 6), int)
    pred = np.zeros((6, 6, 6), int)
    truth[2, 2, 2:4] = 1
    pred[2, 2, 3:5] = 1
    return pred, truth


def test_dice_and_hd95_hand_computed_with_anisotropic_spacing():
    pred, truth = _two_voxel_pair()
    r = _one(pred, truth, spacing=(0.5, 0.7, 2.0))
    assert r["dice"] == pytest.approx(0.5)
    assert r["hd95_vox"] == pytest.approx(0.95, abs=1e-6)
    assert r["hd95_mm"] == pytest.approx(0.95 * 2.0, abs=1e-5)  # the shift is along z: uses spacing[2]
    assert r["status"] == "both" and r["truth_voxels"] == 2 and r["pred_voxels"] == 2
    # the same masks shifted along x instead: now spacing[0] applies
    r_x = _one(np.moveaxis(pred, 2, 0), np.moveaxis(truth, 2, 0), spacing=(0.5, 0.7, 2.0))
    assert r_x["hd95_mm"] == pytest.approx(0.95 * 0.5, abs=1e-5)


def test_hd95_parallel_lines_2d():
    """Two parallel 10-pixel lines 2 rows apart: every surface distance is exactly 2 rows (Dice 0)."""
    truth = np.zeros((5, 10), int)
    pred = np.zeros((5, 10), int)
    truth[1, :] = 3
    pred[3, :] = 3
    r = organ_metrics(pred, truth, spacing=(3.0, 0.5), organs=["a", "b", "c"])[2]
    assert r["dice"] == 0.0 and r["hd95_vox"] == pytest.approx(2.0) and r["hd95_mm"] == pytest.approx(6.0)
    r2 = organ_metrics(pred, truth, spacing=(0.5, 3.0), organs=["a", "b", "c"])[2]
    assert r2["hd95_mm"] == pytest.approx(1.0)
    # organs 1 and 2 are absent from both
    assert organ_metrics(pred, truth, organs=["a", "b", "c"])[0]["status"] == "absent"


def test_unknown_spacing_gives_no_mm():
    pred, truth = _two_voxel_pair()
    r = _one(pred, truth)
    assert r["hd95_vox"] == pytest.approx(0.95, abs=1e-6) and math.isnan(r["hd95_mm"])


@pytest.mark.parametrize(
    "pred_on, truth_on, correct, published, status",
    [
        (True, False, (0.0, math.nan), (1.0, 0.0), "false_positive"),  # published rewards the false positive
        (False, True, (0.0, math.nan), (0.0, 0.0), "missed"),
        (False, False, (math.nan, math.nan), (0.0, 0.0), "absent"),
    ],
)
def test_empty_mask_rules(pred_on, truth_on, correct, published, status):
    pred, truth = _two_voxel_pair()
    pred, truth = pred * pred_on, truth * truth_on
    for rule, (dice, hd) in (("correct", correct), ("published", published)):
        r = _one(pred, truth, spacing=(1.0, 1.0, 2.0), empty_rule=rule)
        assert r["status"] == status
        for got, want in ((r["dice"], dice), (r["hd95_vox"], hd), (r["hd95_mm"], hd)):
            assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want), (rule, got, want)


def test_summary_means_follow_the_rule():
    pred, truth = _two_voxel_pair()
    cases = lambda rule: [  # noqa: E731
        organ_metrics(pred, truth, spacing=(1, 1, 2), organs=["organ"], empty_rule=rule),  # 0.5 / 0.95 vox
        organ_metrics(pred, truth * 0, spacing=(1, 1, 2), organs=["organ"], empty_rule=rule),  # false positive
    ]
    correct = summarize_organ_metrics(cases("correct"), "correct")["organs"][0]
    assert correct["dice"] == pytest.approx(0.25) and correct["n_dice"] == 2  # (0.5 + 0) / 2
    assert correct["hd95_vox"] == pytest.approx(0.95, abs=1e-6) and correct["n_hd95"] == 1  # undefined one left out
    published = summarize_organ_metrics(cases("published"), "published")
    assert published["organs"][0]["dice"] == pytest.approx(0.75)  # (0.5 + 1) / 2
    assert published["organs"][0]["hd95_vox"] == pytest.approx(0.475, abs=1e-6)  # (0.95 + 0) / 2
    assert published["dice"] == pytest.approx(0.75)
    table = summary_table_markdown(published)
    assert "| VM-UNet (paper, Table II) | 81.08 | 19.21" in table and "75.00" in table


def test_dense_hd95_path_equals_monai_metric():
    rng = np.random.default_rng(0)
    truth = np.zeros((30, 40, 10), int)
    truth[8:22, 10:30, 2:8] = 1
    pred = np.roll(truth, 2, axis=1) | (rng.random(truth.shape) < 0.05)
    spacing = (0.8, 0.6, 2.5)
    monai_path = _one(pred, truth, spacing=spacing, dense_threshold=10**9)
    dense_path = _one(pred, truth, spacing=spacing, dense_threshold=0)
    assert monai_path["hd95_mm"] == pytest.approx(dense_path["hd95_mm"], rel=1e-5)
    assert monai_path["hd95_vox"] == pytest.approx(dense_path["hd95_vox"], rel=1e-5)
    assert monai_path["hd95_mm"] > 1.0  # the noise makes it larger than the 2-voxel shift


def test_bad_arguments():
    with pytest.raises(ValueError, match="shape"):
        organ_metrics(np.zeros((3, 3)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="spacing"):
        organ_metrics(np.zeros((3, 3, 3)), np.zeros((3, 3, 3)), spacing=(1, 1))
    with pytest.raises(ValueError, match="empty_rule"):
        organ_metrics(np.zeros((3, 3)), np.zeros((3, 3)), empty_rule="lenient")


def test_pooled_hd95_medpy_convention():
    """medpy pools both directions: [0, 1] + [1, 0] -> p95 of [0, 0, 1, 1] = 1.0 voxel (MONAI's max gives 0.95)."""
    pred, truth = _two_voxel_pair()
    for threshold in (10**9, 0):  # MONAI KD-tree path and dense path
        r = _one(pred, truth, spacing=(1.0, 1.0, 2.0), hd95_pooling="pooled", dense_threshold=threshold)
        assert r["hd95_vox"] == pytest.approx(1.0) and r["hd95_mm"] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="hd95_pooling"):
        _one(pred, truth, hd95_pooling="mean")

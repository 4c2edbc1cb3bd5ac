"""The ISIC metrics of the VM-UNet paper as a MONAI metric.

Published protocol (``engine.val_one_epoch``; ``vmunet_reference.md`` section 5.1): predictions and
ground truths of the **whole split** are flattened and concatenated, both are thresholded at 0.5
(``>= 0.5``), and one confusion matrix over all pixels gives

- ``accuracy = (TN + TP) / all``,
- ``sensitivity = TP / (TP + FN)``, ``specificity = TN / (TN + FP)``,
- ``dsc = 2TP / (2TP + FP + FN)`` (called ``f1_or_dsc``),
- ``miou = TP / (TP + FP + FN)`` (called "mIoU" but it is the foreground IoU only),

each 0 when its denominator is 0. :class:`ISICMetric` keeps per-image confusion counts (so it also
works with distributed all-gather) and sums them in :meth:`ISICMetric.aggregate`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.metrics import CumulativeIterationMetric

__all__ = ["ISIC_METRIC_NAMES", "ISICMetric", "confusion_counts", "isic_scores"]

#: metric names in the order of the paper's tables
ISIC_METRIC_NAMES = ("miou", "dsc", "accuracy", "sensitivity", "specificity")


def confusion_counts(y_pred: torch.Tensor, y: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Per-image ``[TN, FP, FN, TP]`` counts (shape (B, 4), float64) of ``y_pred >= t`` against ``y >= t``.

    Args:
        y_pred: (B, 1, ...) probabilities or binary predictions.
        y: (B, 1, ...) ground truth, binary or soft.
        threshold: the paper's 0.5.
    """
    if y_pred.shape != y.shape:
        raise ValueError(f"y_pred shape {tuple(y_pred.shape)} != y shape {tuple(y.shape)}")
    pred = (y_pred >= threshold).reshape(y_pred.shape[0], -1)
    true = (y >= threshold).reshape(y.shape[0], -1)
    tp = (pred & true).sum(1)
    fp = (pred & ~true).sum(1)
    fn = (~pred & true).sum(1)
    tn = (~pred & ~true).sum(1)
    return torch.stack([tn, fp, fn, tp], dim=1).to(torch.float64)


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den != 0 else 0.0


def isic_scores(counts: torch.Tensor | Sequence[float]) -> dict[str, float]:
    """The paper's metrics from one summed ``[TN, FP, FN, TP]`` vector (0 where a denominator is 0).

    Example:
        >>> isic_scores([90, 2, 3, 5])["dsc"]  # 2*5 / (2*5 + 2 + 3)
        0.6666666666666666
    """
    tn, fp, fn, tp = (float(v) for v in torch.as_tensor(counts, dtype=torch.float64).reshape(4))
    return {
        "miou": _ratio(tp, tp + fp + fn),
        "dsc": _ratio(2 * tp, 2 * tp + fp + fn),
        "accuracy": _ratio(tn + tp, tn + fp + fn + tp),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
    }


class ISICMetric(CumulativeIterationMetric):
    """Pixel-pooled ISIC metrics of the VM-UNet paper (one confusion matrix over the whole split).

    Args:
        metric_name: one of ``miou``, ``dsc``, ``accuracy``, ``sensitivity``, ``specificity`` returned by
            :meth:`aggregate`; ``None`` returns a dict of all five.
        threshold: binarisation threshold for predictions and ground truth (paper 0.5, ``>=``).

    Example:
        >>> metric = ISICMetric("dsc")
        >>> _ = metric(torch.tensor([[[[1.0, 0.0]]]]), torch.tensor([[[[1.0, 1.0]]]]))  # TP=1, FN=1
        >>> metric.aggregate()
        0.6666666666666666
    """

    def __init__(self, metric_name: str | None = None, threshold: float = 0.5) -> None:
        super().__init__()
        if metric_name is not None and metric_name not in ISIC_METRIC_NAMES:
            raise ValueError(f"metric_name must be one of {ISIC_METRIC_NAMES} or None, got {metric_name!r}")
        self.metric_name = metric_name
        self.threshold = threshold

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return confusion_counts(y_pred, y, self.threshold)

    def confusion_matrix(self) -> torch.Tensor:
        """Summed ``[TN, FP, FN, TP]`` over everything buffered so far (all ranks)."""
        buffer = self.get_buffer()
        if buffer is None or (isinstance(buffer, torch.Tensor) and buffer.numel() == 0):
            return torch.zeros(4, dtype=torch.float64)
        return buffer.reshape(-1, 4).sum(0)

    def aggregate(self) -> float | dict[str, float]:  # type: ignore[override]
        scores = isic_scores(self.confusion_matrix())
        return scores if self.metric_name is None else scores[self.metric_name]

"""ISIC handlers: the paper's metric for ignite, the evaluation report writer and inference overlays."""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from monai.handlers import IgniteMetricHandler, from_engine
from PIL import Image

from vmunet_monai.data.isic_io import ISICDataError, read_image_rgb
from vmunet_monai.handlers.utils import (
    atomic_write_json,
    atomic_write_text,
    collective_device,
    is_main_process,
    world_size,
)
from vmunet_monai.metrics.isic import ISIC_METRIC_NAMES, ISICMetric, confusion_counts, isic_scores

__all__ = ["ISICMetricHandler", "ISICEvaluationWriter", "OverlayWriter", "overlay_panel", "to_display"]

logger = logging.getLogger(__name__)

TRUTH_COLOUR = np.array([0, 255, 0], dtype=np.float32)
PRED_COLOUR = np.array([255, 0, 0], dtype=np.float32)


class ISICMetricHandler(IgniteMetricHandler):
    """Ignite handler of :class:`vmunet_monai.metrics.ISICMetric` (one confusion matrix over the split).

    Args:
        metric_name: ``miou``, ``dsc``, ``accuracy``, ``sensitivity`` or ``specificity``.
        threshold: binarisation threshold of prediction and truth (paper 0.5).
        output_transform: maps ``engine.state.output`` to ``(y_pred, y)``.
        save_details: keep the per-image ``[TN, FP, FN, TP]`` counts in ``engine.state.metric_details``.

    Example (bundle config)::

        "val_dsc": {"_target_": "vmunet_monai.handlers.ISICMetricHandler", "metric_name": "dsc",
                    "output_transform": "$monai.handlers.from_engine(['pred', 'label'])"}
    """

    def __init__(
        self,
        metric_name: str = "dsc",
        threshold: float = 0.5,
        output_transform: Callable = from_engine(["pred", "label"]),
        save_details: bool = False,
    ) -> None:
        super().__init__(
            metric_fn=ISICMetric(metric_name, threshold), output_transform=output_transform, save_details=save_details
        )


def to_display(image: torch.Tensor) -> np.ndarray:
    """(C, W, H) MONAI ``PILReader`` tensor (any range) -> (H, W, 3) uint8 for PIL."""
    array = image.detach().cpu().float().numpy()
    if array.shape[0] == 1:
        array = np.repeat(array, 3, axis=0)
    array = array[:3].transpose(2, 1, 0)  # (C, W, H) -> (H, W, C)
    low, high = float(array.min()), float(array.max())
    array = (array - low) / (high - low) * 255 if high > low else np.zeros_like(array)
    return array.astype(np.uint8)


def _mask_hw(mask: torch.Tensor | np.ndarray) -> np.ndarray:
    """Channel-first or squeezed (W, H) mask -> (H, W) bool."""
    array = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    array = np.squeeze(array)
    return array.T > 0.5 if array.max() <= 1 else array.T > 127


def overlay_panel(image_hw3: np.ndarray, mask_hw: np.ndarray, colour: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Tint ``mask`` pixels of ``image`` with ``colour``."""
    out = image_hw3.astype(np.float32)
    out[mask_hw] = (1 - alpha) * out[mask_hw] + alpha * colour
    return out.astype(np.uint8)


def _file_name(item: dict, key: str, index: int) -> str:
    meta = getattr(item.get(key), "meta", {}) or {}
    name = meta.get("filename_or_obj")
    return Path(str(name)).stem if name else f"image_{index:05d}"


class ISICEvaluationWriter:
    """Write the evaluation report: metrics (JSON + CSV), per-image scores (CSV) and overlay PNGs.

    Attach to the evaluator; expects post-processed outputs with binary ``pred`` and ``label`` (1, W, H)
    and the preprocessed ``image``. Files in ``output_dir``:

    - ``metrics.json`` / ``metrics.csv``: every evaluator metric (e.g. ``val_dsc``, ``val_mean_dice``)
      and the paper's five ISIC metrics from one confusion matrix over all pixels of the images seen
      here, with that matrix and the image count;
    - ``per_image_scores.csv``: file, Dice, IoU, TP/FP/FN/TN, truth and prediction areas. An image with
      empty truth and empty prediction scores Dice = IoU = 1, empty truth with a prediction scores 0;
    - ``overlays/<file>.png``: three panels: image, truth (green), prediction (red).

    In a multi-GPU evaluation every rank writes the overlays of its own shard, and rank 0 writes the
    reports after gathering the per-image rows and confusion counts of all ranks (rows in dataset order
    for MONAI's ``DistributedSampler`` with ``shuffle=False``), so they match a one-GPU evaluation.

    Args:
        output_dir: report folder.
        save_overlays: write the overlay PNGs.
        image_key, label_key, pred_key: keys of the output dictionaries.
    """

    def __init__(
        self,
        output_dir: str,
        save_overlays: bool = True,
        image_key: str = "image",
        label_key: str = "label",
        pred_key: str = "pred",
    ) -> None:
        self.output_dir = Path(output_dir)
        self.save_overlays = save_overlays
        self.image_key, self.label_key, self.pred_key = image_key, label_key, pred_key
        self.rows: list[dict] = []
        self.counts = torch.zeros(4, dtype=torch.float64)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    def _started(self, engine: Engine) -> None:
        self.rows, self.counts = [], torch.zeros(4, dtype=torch.float64)

    def _iteration_completed(self, engine: Engine) -> None:
        outputs = engine.state.output if isinstance(engine.state.output, list) else [engine.state.output]
        for item in outputs:
            pred, label = item[self.pred_key], item[self.label_key]
            # counted on the prediction's device, accumulated on the CPU in float64 (exact up to 2**53 pixels)
            counts = confusion_counts(pred[None].float(), label[None].float())[0].detach().to("cpu", torch.float64)
            self.counts += counts
            tn, fp, fn, tp = counts.tolist()
            empty = tp + fn == 0 and tp + fp == 0
            name = _file_name(item, self.image_key, len(self.rows))
            self.rows.append({
                "file": name,
                "dice": 1.0 if empty else 2 * tp / (2 * tp + fp + fn),
                "iou": 1.0 if empty else tp / (tp + fp + fn),
                "tp": int(tp), "fp": int(fp), "fn": int(fn), "tn": int(tn),
                "truth_area": int(tp + fn), "pred_area": int(tp + fp),
            })
            if self.save_overlays:
                image = to_display(item[self.image_key])
                panels = [image, overlay_panel(image, _mask_hw(label), TRUTH_COLOUR),
                          overlay_panel(image, _mask_hw(pred), PRED_COLOUR)]
                (self.output_dir / "overlays").mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.concatenate(panels, axis=1)).save(self.output_dir / "overlays" / f"{name}.png")

    def _gather_over_ranks(self) -> None:
        """Sum the confusion counts and collect the per-image rows of all ranks (collective; every rank calls)."""
        if world_size() == 1:
            return
        counts = self.counts.to(collective_device())
        dist.all_reduce(counts)
        self.counts = counts.cpu()
        shards: list = [None] * world_size()
        dist.all_gather_object(shards, self.rows)
        # DistributedSampler(shuffle=False) gives rank r the items r, r + world, ...: interleave back
        self.rows = [shard[i] for i in range(max(len(s) for s in shards)) for shard in shards if i < len(shard)]

    def _completed(self, engine: Engine) -> None:
        self._gather_over_ranks()
        if not is_main_process():
            return
        metrics = {}
        for name, value in engine.state.metrics.items():
            try:
                metrics[name] = float(value)
            except (TypeError, ValueError):
                continue
        scores = isic_scores(self.counts)
        report = {
            "metrics": metrics,
            "ranks": world_size(),  # > 1: every number here is gathered over all ranks
            "isic_pixel_pooled": scores,
            "confusion_matrix": dict(zip(("tn", "fp", "fn", "tp"), (int(v) for v in self.counts.tolist()))),
            "num_images": len(self.rows),
            "per_image_mean": {
                "dice": float(np.mean([r["dice"] for r in self.rows])) if self.rows else 0.0,
                "iou": float(np.mean([r["iou"] for r in self.rows])) if self.rows else 0.0,
            },
        }
        atomic_write_json(report, self.output_dir / "metrics.json")
        lines = ["metric,value"] + [f"{k},{v}" for k, v in metrics.items()]
        lines += [f"isic_{k},{scores[k]}" for k in ISIC_METRIC_NAMES]
        lines += [f"per_image_mean_{k},{v}" for k, v in report["per_image_mean"].items()]
        atomic_write_text("\n".join(lines) + "\n", self.output_dir / "metrics.csv")
        text = io.StringIO()
        if self.rows:
            writer = csv.DictWriter(text, fieldnames=list(self.rows[0]))
            writer.writeheader()
            writer.writerows(self.rows)
        atomic_write_text(text.getvalue(), self.output_dir / "per_image_scores.csv")
        summary = "  ".join(f"{k} {v:.4f}" for k, v in scores.items())
        logger.info(f"ISIC metrics over {len(self.rows)} images: {summary}; report in {self.output_dir}")


class OverlayWriter:
    """Inference overlays at the original image size: the input image with the predicted lesion in red.

    Attach to the inference evaluator. Reads each original image again (the path is in the image's
    metadata) and the post-processed, inverted ``pred`` (at the original size), and writes
    ``<output_dir>/<file>_overlay.png``.

    Args:
        output_dir: folder of the overlays.
        enabled: write nothing when ``False`` (the ``save_overlay`` config id).
        image_key, pred_key: keys of the output dictionaries.
    """

    def __init__(self, output_dir: str, enabled: bool = True, image_key: str = "image", pred_key: str = "pred"):
        self.output_dir = Path(output_dir)
        self.enabled = enabled
        self.image_key, self.pred_key = image_key, pred_key

    def attach(self, engine: Engine) -> None:
        if self.enabled:
            engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        outputs = engine.state.output if isinstance(engine.state.output, list) else [engine.state.output]
        for index, item in enumerate(outputs):
            meta = getattr(item.get(self.image_key), "meta", None) or getattr(item.get(self.pred_key), "meta", {})
            path = meta.get("filename_or_obj")
            if not path:
                continue
            try:
                image = read_image_rgb(path)
            except ISICDataError as err:
                logger.warning(f"overlay skipped: {err}")
                continue
            mask = _mask_hw(item[self.pred_key])
            if mask.shape != image.shape[:2]:
                logger.warning(f"overlay skipped for {path}: prediction {mask.shape} != image {image.shape[:2]}")
                continue
            self.output_dir.mkdir(parents=True, exist_ok=True)
            Image.fromarray(overlay_panel(image, mask, PRED_COLOUR)).save(
                self.output_dir / f"{Path(str(path)).stem}_overlay.png")

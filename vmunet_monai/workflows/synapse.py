"""Synapse 3D workflows: slice-wise inference over CT volumes, per-organ evaluation, and users' CT datalists.

Pieces used by the bundle configs ``synapse_{train,evaluate,inference}.json``:

- :class:`SynapseSliceInferer` -- MONAI ``SliceInferer`` over the axial (last) axis; each slice is resized to
  the training size (224), run through the 2D network, and the prediction is restored to the slice's original
  size with nearest neighbour (reference 5.2). By default it returns the per-slice ``argmax`` label map
  ``(B, 1, H, W, D)`` instead of nine full-size probability channels, which would need 9x the memory of the
  CT volume.
- :class:`SynapseOrganMetrics` -- an ignite metric (use it as the evaluator's key metric): per-case per-organ
  Dice and HD95 (mm and voxels, :func:`vmunet_monai.metrics.synapse.organ_metrics`), written as CSV plus a
  Table-II-like summary (markdown and CSV); its value is the mean Dice over organs.
- :func:`ct_datalist` -- NIfTI files and DICOM series folders under a path, for inference on users' CT.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from ignite.metrics import Metric
from monai.data import MetaTensor
from monai.inferers import SliceInferer

from vmunet_monai.data.synapse import SYNAPSE_ORGANS, SynapseDataError
from vmunet_monai.handlers.checkpoint import BestModelSaver
from vmunet_monai.metrics.synapse import (
    EMPTY_RULES,
    organ_metrics,
    summarize_organ_metrics,
    summary_table_markdown,
)

__all__ = [
    "ResizedSliceNetwork",
    "SynapseSliceInferer",
    "SynapseOrganMetrics",
    "case_name",
    "spacing_from_affine",
    "write_synapse_results",
    "ct_datalist",
    "case_name_formatter",
    "checkpoint_available",
    "EpochBestModelSaver",
    "SYNAPSE_PAPER_NETWORK",
    "synapse_model_info",
]

logger = logging.getLogger(__name__)


class ResizedSliceNetwork(torch.nn.Module):
    """Run a 2D network at a fixed slice size and return its prediction at the input slice size.

    Args:
        network: 2D segmentation network, ``(B, C, s, s) -> (B, K, s, s)`` logits.
        slice_size: size the network was trained at (224 for Synapse).
        output: ``"labels"`` -- argmax at ``slice_size`` then nearest-neighbour resize, ``(B, 1, H, W)`` float;
            ``"logits"`` -- logits resized with nearest neighbour, ``(B, K, H, W)`` (argmax of it gives the same labels).
        mode: interpolation of the input slice (``bicubic`` as the training ``Resized``; published: spline order 3).

    Example:
        >>> net = torch.nn.Conv2d(1, 9, 1)
        >>> ResizedSliceNetwork(net, 32)(torch.rand(2, 1, 50, 40)).shape
        torch.Size([2, 1, 50, 40])
    """

    def __init__(self, network: Callable, slice_size: int | Sequence[int] = 224, output: str = "labels", mode: str = "bicubic"):
        super().__init__()
        if output not in ("labels", "logits"):
            raise ValueError(f"output must be 'labels' or 'logits', got {output!r}.")
        self.network = network
        self.slice_size = (slice_size, slice_size) if isinstance(slice_size, int) else tuple(slice_size)
        self.output = output
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(x, MetaTensor):  # metadata is not needed inside; MetaTensor dispatch slows the scan's many ops
            x = x.as_tensor()
        size = tuple(x.shape[-2:])
        if size != self.slice_size:
            x = F.interpolate(x, size=self.slice_size, mode=self.mode, align_corners=False)
        out = self.network(x)
        if self.output == "labels":
            out = out.argmax(dim=1, keepdim=True).to(x.dtype)
        if tuple(out.shape[-2:]) != size:
            out = F.interpolate(out, size=size, mode="nearest")
        return out


class SynapseSliceInferer(SliceInferer):
    """``SliceInferer`` over whole axial slices with the per-slice resize of :class:`ResizedSliceNetwork`.

    Input ``(B, 1, H, W, D)`` with axial slices on the last axis (``spatial_dim=2``); output ``(B, 1, H, W, D)``
    labels (``output="labels"``) or ``(B, K, H, W, D)`` logits. A 2D input ``(B, 1, H, W)`` is passed straight
    through the resizing wrapper (validation on slices).

    Args:
        slice_size: training slice size (224).
        spatial_dim: axis of the slices among the spatial axes (2 = last, as for RAS/LPS NIfTI and our h5 reader).
        sw_batch_size: slices per network call.
        output: ``"labels"`` or ``"logits"``.
        kwargs: passed to ``SliceInferer`` (e.g. ``sw_device``, ``device``, ``progress``).

    Example:
        >>> inferer = SynapseSliceInferer(slice_size=32, sw_batch_size=4)
        >>> inferer(torch.rand(1, 1, 40, 48, 5), torch.nn.Conv2d(1, 9, 1)).shape
        torch.Size([1, 1, 40, 48, 5])
    """

    def __init__(
        self,
        slice_size: int | Sequence[int] = 224,
        spatial_dim: int = 2,
        sw_batch_size: int = 16,
        output: str = "labels",
        **kwargs: Any,
    ) -> None:
        # roi (-1, -1): one window per slice covering it entirely; no overlap, so values are not blended
        super().__init__(spatial_dim=spatial_dim, roi_size=(-1, -1), sw_batch_size=sw_batch_size, overlap=0.0, **kwargs)
        self.slice_size = slice_size
        self.output = output

    def __call__(self, inputs: torch.Tensor, network: Callable, *args: Any, **kwargs: Any):  # type: ignore[override]
        wrapped = ResizedSliceNetwork(network, self.slice_size, self.output)
        if inputs.ndim == 4:
            return wrapped(inputs)
        if inputs.ndim != 5:
            raise ValueError(f"expected (B, C, H, W, D) volumes or (B, C, H, W) slices, got shape {tuple(inputs.shape)}.")
        self.roi_size = (-1, -1)  # SliceInferer rewrites roi_size in place on every call
        return super().__call__(inputs, wrapped, *args, **kwargs)


def case_name(meta_or_path: Any) -> str:
    """Case id from a MetaTensor / meta dict / path: the file name without ``.npy.h5``, ``.nii.gz``, ... ."""
    path = meta_or_path
    if hasattr(meta_or_path, "meta"):
        path = meta_or_path.meta.get("filename_or_obj", "case")
    elif isinstance(meta_or_path, dict):
        path = meta_or_path.get("filename_or_obj", "case")
    name = Path(str(path).rstrip("/")).name
    for suffix in (".npy.h5", ".nii.gz", ".h5", ".nii", ".npz", ".nrrd", ".mha"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def spacing_from_affine(affine: Any, ndim: int = 3) -> tuple[float, ...]:
    """Voxel size per array axis (column norms of the affine's linear part)."""
    a = np.asarray(affine.cpu() if isinstance(affine, torch.Tensor) else affine, dtype=np.float64)
    return tuple(float(v) for v in np.sqrt((a[:ndim, :ndim] ** 2).sum(axis=0)))


def _as_label_volume(x: Any, what: str) -> torch.Tensor:
    t = torch.as_tensor(x).detach().cpu()
    if t.ndim >= 3 and t.shape[0] == 1:  # channel-first single channel
        t = t[0]
    if t.ndim not in (2, 3):
        raise ValueError(f"{what}: expected a label volume (1, H, W[, D]), got shape {tuple(torch.as_tensor(x).shape)}.")
    return t.round().to(torch.int16)


def write_synapse_results(
    output_dir: str | os.PathLike,
    cases: list[str],
    per_case: list[list[dict[str, Any]]],
    spacings: list[Sequence[float] | None],
    empty_rule: str,
    prefix: str = "synapse",
    model_name: str = "VM-UNet (this run)",
    hd95_pooling: str = "max",
) -> dict[str, Any]:
    """Write ``<prefix>_per_case.csv``, ``<prefix>_summary.csv`` and ``<prefix>_summary.md``; return the summary."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    fields = ["case", "organ_index", "organ", "dice", "hd95_mm", "hd95_vox", "truth_voxels", "pred_voxels", "status",
              "spacing_mm", "spacing_known", "empty_rule", "hd95_pooling"]
    with open(out / f"{prefix}_per_case.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for case, rows, sp in zip(cases, per_case, spacings):
            for r in rows:
                w.writerow({**r, "case": case, "spacing_mm": "" if sp is None else " ".join(f"{s:g}" for s in sp),
                            "spacing_known": sp is not None, "empty_rule": empty_rule, "hd95_pooling": hd95_pooling})
    summary = summarize_organ_metrics(per_case, empty_rule)
    summary["hd95_pooling"] = hd95_pooling
    with open(out / f"{prefix}_summary.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["organ", "dice", "n_dice", "hd95_mm", "n_hd95", "hd95_vox"])
        for r in summary["organs"]:
            w.writerow([r["organ"], r["dice"], r["n_dice"], r["hd95_mm"], r["n_hd95"], r["hd95_vox"]])
        w.writerow(["mean", summary["dice"], summary["cases"], summary["hd95_mm"], "", summary["hd95_vox"]])
    (out / f"{prefix}_summary.md").write_text(summary_table_markdown(summary, model_name=model_name))
    return summary


class SynapseOrganMetrics(Metric):
    """Ignite metric over whole volumes: per-organ Dice / HD95 per case; value = mean Dice over organs.

    Feed it ``from_engine(["pred", "label"])`` with label volumes ``(1, H, W, D)`` (class indices, e.g. the
    :class:`SynapseSliceInferer` output). The voxel spacing is read from the label's affine; volumes from TransUNet
    h5 files without a ``spacing`` attribute are marked ``spacing_known=False`` (their "mm" equals voxels).
    With ``output_dir`` set, every evaluation writes the CSV files and the summary table there.

    Args:
        output_dir: folder for ``synapse_per_case.csv``, ``synapse_summary.{csv,md}`` (``None``: keep in memory).
        empty_rule: ``"correct"`` (default) or ``"published"`` (see :mod:`vmunet_monai.metrics.synapse`).
        hd95_pooling: ``"max"`` (MONAI, default) or ``"pooled"`` (medpy / the paper).
        organs: organ names (label value = index + 1).
        output_transform: ignite output transform.
        model_name: row name in the summary table.
    """

    def __init__(
        self,
        output_dir: str | None = None,
        empty_rule: str = "correct",
        hd95_pooling: str = "max",
        organs: Sequence[str] = SYNAPSE_ORGANS,
        output_transform: Callable = lambda x: x,
        model_name: str = "VM-UNet (this run)",
    ) -> None:
        if empty_rule not in EMPTY_RULES:
            raise ValueError(f"empty_rule must be one of {EMPTY_RULES}, got {empty_rule!r}.")
        self.output_dir = output_dir
        self.empty_rule = empty_rule
        self.hd95_pooling = hd95_pooling
        self.organs = tuple(organs)
        self.model_name = model_name
        super().__init__(output_transform=output_transform)

    def reset(self) -> None:
        self.cases: list[str] = []
        self.per_case: list[list[dict[str, Any]]] = []
        self.spacings: list[tuple[float, ...] | None] = []
        self.summary: dict[str, Any] | None = None

    def update(self, output: Sequence[Any]) -> None:
        preds, labels = output
        if isinstance(preds, torch.Tensor) and preds.ndim in (4, 5) and not isinstance(labels, list):
            preds, labels = list(preds), list(labels)  # a collated batch
        for pred, label in zip(preds, labels):
            name = case_name(label)
            p, t = _as_label_volume(pred, f"prediction of {name}"), _as_label_volume(label, f"label of {name}")
            meta = getattr(label, "meta", {})
            known = bool(meta.get("spacing_known", True)) if meta else False
            spacing = spacing_from_affine(label.affine, t.ndim) if known and hasattr(label, "affine") else None
            self.per_case.append(
                organ_metrics(p, t, spacing=spacing, organs=self.organs, empty_rule=self.empty_rule,
                              hd95_pooling=self.hd95_pooling)
            )
            self.cases.append(name)
            self.spacings.append(spacing)
            logger.info("%s: mean Dice %.4f", name, np.nanmean([r["dice"] for r in self.per_case[-1]]))

    def compute(self) -> float:
        if not self.per_case:
            raise RuntimeError("SynapseOrganMetrics: no volumes were evaluated.")
        if self.output_dir:
            self.summary = write_synapse_results(
                self.output_dir, self.cases, self.per_case, self.spacings, self.empty_rule, model_name=self.model_name,
                hd95_pooling=self.hd95_pooling,
            )
        else:
            self.summary = summarize_organ_metrics(self.per_case, self.empty_rule)
        value = self.summary["dice"]
        return 0.0 if math.isnan(value) else float(value)


def _is_dicom_series(folder: Path) -> bool:
    import SimpleITK as sitk

    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # GDCM prints "No Series were found" for plain folders
    try:
        return bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def ct_datalist(path: str | os.PathLike, image_key: str = "image") -> list[dict[str, str]]:
    """Inference datalist for users' CT: a NIfTI file, a DICOM series folder, or a folder holding either.

    Returns ``[{"image": path}]`` sorted by name (DICOM series as folder paths, read by
    :class:`~vmunet_monai.data.synapse.SimpleITKReader`). Raises naming ``path`` when nothing is found.
    """
    root = Path(path)
    if root.is_file():
        return [{image_key: str(root)}]
    if not root.is_dir():
        raise SynapseDataError(f"{root}: no such file or folder.")
    if _is_dicom_series(root):
        return [{image_key: str(root)}]
    items = [p for p in sorted(root.iterdir()) if p.is_file() and p.name.endswith((".nii", ".nii.gz"))]
    items += [p for p in sorted(root.iterdir()) if p.is_dir() and _is_dicom_series(p)]
    if not items:
        raise SynapseDataError(f"{root}: no NIfTI (.nii, .nii.gz) file or DICOM series folder found.")
    return [{image_key: str(p)} for p in items]


def case_name_formatter(metadict: dict, saver: Any = None) -> dict[str, Any]:
    """``SaveImaged(output_name_formatter=...)``: name outputs by case (``case0001``, not ``case0001.npy``)."""
    return {"subject": case_name(metadict), "idx": metadict.get("patch_index")}


def checkpoint_available(path: str | os.PathLike, what: str = "Synapse model") -> bool:
    """True if ``path`` exists; otherwise warn that the network keeps its random initial weights.

    Lets the default inference config run out of the box (e.g. on the embedded sample CT) before any training.
    """
    if Path(path).is_file():
        return True
    logger.warning("%s checkpoint %s not found: running with randomly initialised weights.", what, path)
    return False


class EpochBestModelSaver(BestModelSaver):
    """``BestModelSaver`` checked after every *training* epoch: the published Synapse rule keeps the model with
    the lowest mean training loss (``best.pth``, reference 4.2), not the best test-set score.

    Use with ``metric_name="train_loss"`` (an ``ignite.metrics.Average`` of the loss as ``key_train_metric``)
    and ``mode="min"``. Same arguments as :class:`vmunet_monai.handlers.BestModelSaver`.
    """

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)


#: The paper's VM-UNet configuration (reference 1), used when no trained model description exists.
SYNAPSE_PAPER_NETWORK: dict[str, Any] = {
    "depths": [2, 2, 2, 2],
    "depths_decoder": [2, 2, 2, 1],
    "dims": [96, 192, 384, 768],
    "d_state": 16,
}


def synapse_model_info(ckpt_dir: str | os.PathLike, filename: str = "synapse_model_info.json") -> dict[str, Any]:
    """Image size and network arguments of the trained Synapse model (written by training beside the weights).

    Returns ``{"image_size": 224, "network": SYNAPSE_PAPER_NETWORK}`` updated from ``<ckpt_dir>/<filename>``, so
    evaluation and inference rebuild the network that was trained (e.g. a small CPU one) without extra flags.
    """
    import json

    info: dict[str, Any] = {"image_size": 224, "network": dict(SYNAPSE_PAPER_NETWORK)}
    path = Path(ckpt_dir) / filename
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"{path}: cannot read the model description ({err})") from None
        info["image_size"] = int(saved.get("image_size", info["image_size"]))
        info["network"].update({k: v for k, v in saved.get("network", {}).items() if k in SYNAPSE_PAPER_NETWORK})
    return info

"""Per-epoch training history (JSON + CSV) and a learning-curve PNG."""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from pathlib import Path

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events

from vmunet_monai.handlers.utils import (
    atomic_write_json,
    atomic_write_text,
    collective_device,
    is_main_process,
    world_size,
)

__all__ = ["TrainingHistory", "plot_learning_curve"]

logger = logging.getLogger(__name__)


def plot_learning_curve(history: list[dict], path: str | Path) -> None:
    """Plot training loss and every ``val_*`` metric of ``history`` against the epoch into ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot(epochs, [row.get("train_loss") for row in history], marker="o", label="train loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("BCE + Dice loss")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend()
    names = sorted({k for row in history for k in row if k.startswith("val_") and not k.endswith("_s")})
    for name in names:
        points = [(row["epoch"], row[name]) for row in history if row.get(name) is not None]
        if points:
            ax_metric.plot(*zip(*points), marker="o", label=name)
    ax_metric.set_xlabel("epoch")
    ax_metric.set_ylabel("validation metric")
    ax_metric.set_ylim(0, 1)
    ax_metric.grid(alpha=0.3)
    if names:
        ax_metric.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(path).with_suffix(".png.tmp")
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(path)


class TrainingHistory:
    """Record one row per epoch and write ``history.json``, ``history.csv`` and ``learning_curve.png``.

    A row holds ``epoch``, ``lr`` (used during the epoch), ``train_loss`` (mean over iterations),
    ``train_time_s`` (iterations only), ``epoch_time_s`` (wall time of the epoch including the scheduler
    step and validation), ``val_time_s`` and every metric of the validator
    (prefixed as the validator names them, e.g. ``val_dsc``, ``val_miou``), when it ran that epoch.
    On resume, rows after the resumed epoch are discarded. Only rank 0 writes.

    In a distributed run (every rank attaches it), ``train_loss`` is the mean over the iterations of all
    ranks, and ``lr_ranks`` lists the learning rate each rank used, so that a schedule that drifted between
    ranks shows in the history; ``world_size`` records the number of ranks.

    Attach it to the trainer after ``ValidationHandler`` (so the epoch's validation metrics exist) and
    before ``LatestCheckpointer``: a kill between the two writes then leaves a history row that the
    resumed run replaces, never a checkpoint without its row.

    Args:
        output_dir: folder of the three files.
        validator: the validation evaluator (``@validate#evaluator``) or ``None``.
        optimizer: the optimizer (for ``lr``).
    """

    def __init__(self, output_dir: str, validator: Engine | None = None, optimizer=None) -> None:
        self.output_dir = Path(output_dir)
        self.validator = validator
        self.optimizer = optimizer
        self.rows: list[dict] = []
        self._loss_sum = 0.0
        self._loss_count = 0
        self._lr = None
        self._epoch_start = 0.0
        self._validated_epoch = -1
        self._resumed_rows_loaded = False

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)
        if self.validator is not None:
            self.validator.add_event_handler(Events.COMPLETED, self._validated)

    def _validated(self, engine: Engine) -> None:
        self._validated_epoch = int(engine.state.epoch)

    def _started(self, engine: Engine) -> None:
        self._resumed_rows_loaded = False

    def _load_previous_rows(self, engine: Engine) -> None:
        # at the first EPOCH_STARTED the epoch counter already includes a resume (whatever the handler
        # order at STARTED): keep the rows of the epochs before it, drop rows of an epoch that was redone
        path = self.output_dir / "history.json"
        self.rows = []
        if engine.state.epoch > 1 and path.is_file():
            try:
                self.rows = [r for r in json.loads(path.read_text()) if r["epoch"] < engine.state.epoch]
            except (OSError, ValueError, KeyError, TypeError):
                self.rows = []
        self._resumed_rows_loaded = True

    def _epoch_started(self, engine: Engine) -> None:
        if not self._resumed_rows_loaded:
            self._load_previous_rows(engine)
        self._loss_sum, self._loss_count = 0.0, 0
        self._lr = self.optimizer.param_groups[0]["lr"] if self.optimizer is not None else None
        self._epoch_start = time.perf_counter()

    def _iteration_completed(self, engine: Engine) -> None:
        output = engine.state.output
        loss = output[0].get("loss") if isinstance(output, list) and output else (
            output.get("loss") if isinstance(output, dict) else None)
        if loss is not None:  # summed on the device: no GPU synchronisation per iteration
            self._loss_sum = self._loss_sum + (loss.detach() if hasattr(loss, "detach") else float(loss))
            self._loss_count += 1

    def _reduce_over_ranks(self) -> tuple[float, int, list | None]:
        """The loss sum and iteration count of all ranks, and every rank's learning rate (``None`` alone)."""
        loss_sum, count = self._loss_sum, self._loss_count
        if world_size() == 1:
            return float(loss_sum), count, None
        totals = torch.tensor([float(loss_sum), float(count)], dtype=torch.float64, device=collective_device())
        dist.all_reduce(totals)
        lrs: list = [None] * world_size()
        dist.all_gather_object(lrs, self._lr)
        return float(totals[0]), int(round(float(totals[1]))), lrs

    def _epoch_completed(self, engine: Engine) -> None:
        epoch = int(engine.state.epoch)
        loss_sum, loss_count, lr_ranks = self._reduce_over_ranks()
        row = {
            "epoch": epoch,
            "lr": self._lr,
            "train_loss": loss_sum / max(loss_count, 1),
            "train_time_s": round(float(engine.state.times.get("EPOCH_COMPLETED") or 0.0), 3),
            "epoch_time_s": round(time.perf_counter() - self._epoch_start, 3),
        }
        if lr_ranks is not None:
            row["world_size"] = len(lr_ranks)
            row["lr_ranks"] = lr_ranks
        if self.validator is not None and self._validated_epoch == epoch:
            row["val_time_s"] = round(float(self.validator.state.times.get("COMPLETED") or 0.0), 3)
            for name, value in self.validator.state.metrics.items():
                try:
                    row[name] = float(value)
                except (TypeError, ValueError):
                    continue
        self.rows.append(row)
        if is_main_process():
            self.write()

    def write(self) -> None:
        """Write the JSON, CSV and PNG files."""
        atomic_write_json(self.rows, self.output_dir / "history.json")
        fields = list(dict.fromkeys(k for row in self.rows for k in row))
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=fields)
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(text.getvalue(), self.output_dir / "history.csv")
        try:
            plot_learning_curve(self.rows, self.output_dir / "learning_curve.png")
        except Exception as err:  # a plotting problem must never stop training
            logger.warning(f"learning curve not written: {err}")

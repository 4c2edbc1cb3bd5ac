"""Atomic best-model saving and resumable latest checkpoints for ignite/MONAI engines."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events

from vmunet_monai.handlers.utils import atomic_torch_save, atomic_write_json, is_main_process, unwrap_network

__all__ = ["BestModelSaver", "LatestCheckpointer"]

logger = logging.getLogger(__name__)


class BestModelSaver:
    """Save the network's plain ``state_dict`` whenever the evaluator's key metric improves.

    Attach to the validation evaluator (``validate#handlers``). The file is written atomically (temporary
    file + ``os.replace``), holds tensors only (loads with ``torch.load(..., weights_only=True)``) and has
    no ``module.`` prefix after DDP training. ``<filename stem>_info.json`` beside it records the epoch,
    the metric and ``info`` (e.g. the image size the model was trained at, read back by inference).

    Args:
        save_dir: output folder (created).
        network: the trained network (DDP wrappers are unwrapped).
        metric_name: key of ``engine.state.metrics``; ``None`` uses the evaluator's key metric.
        filename: checkpoint file name (MONAI convention ``model.pt``).
        mode: ``"max"`` (DSC, IoU) or ``"min"`` (losses).
        info: extra JSON-serialisable facts stored in the info file.
    """

    def __init__(
        self,
        save_dir: str,
        network: torch.nn.Module,
        metric_name: str | None = None,
        filename: str = "model.pt",
        mode: str = "max",
        info: dict | None = None,
    ) -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.save_dir = Path(save_dir)
        self.network = network
        self.metric_name = metric_name
        self.filename = filename
        self.mode = mode
        self.info = dict(info or {})
        self.best_metric = -math.inf if mode == "max" else math.inf
        self.best_epoch = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def state_dict(self) -> dict:
        return {"best_metric": float(self.best_metric), "best_epoch": int(self.best_epoch)}

    def load_state_dict(self, state: dict) -> None:
        self.best_metric = float(state["best_metric"])
        self.best_epoch = int(state["best_epoch"])

    def _improved(self, value: float) -> bool:
        return value > self.best_metric if self.mode == "max" else value < self.best_metric

    def __call__(self, engine: Engine) -> None:
        name = self.metric_name or getattr(engine.state, "key_metric_name", None)
        if name is None or name not in engine.state.metrics:
            raise KeyError(f"BestModelSaver: metric {name!r} not among the evaluator metrics {list(engine.state.metrics)}")
        value = float(engine.state.metrics[name])
        if math.isnan(value) or not self._improved(value):
            return
        self.best_metric, self.best_epoch = value, int(engine.state.epoch)
        if not is_main_process():
            return
        path = self.save_dir / self.filename
        state = {k: v.detach().cpu() for k, v in unwrap_network(self.network).state_dict().items()}
        atomic_torch_save(state, path)
        atomic_write_json(
            {"epoch": self.best_epoch, "metric": name, "value": value, **self.info},
            path.with_name(path.stem + "_info.json"),
        )
        logger.info(f"saved {path} (epoch {self.best_epoch}, {name} {value:.4f})")


class LatestCheckpointer:
    """Resumable training: write ``latest.pt`` after every epoch, resume from it when the run starts.

    The checkpoint holds the ``state_dict`` of every object of ``save_dict`` (network, optimizer, LR
    scheduler, the best-model tracker...) plus the trainer's epoch and iteration, as plain tensors and
    numbers (``torch.load(..., weights_only=True)`` works). It is written atomically on rank 0 after the
    epoch's other handlers (scheduler step, validation) have run, so a kill at any moment (``kill -9``
    mid-epoch included) loses at most the current epoch: rerunning the same command continues with the
    next epoch and the same optimizer and scheduler state.

    Attach it to the trainer after ``LrScheduleHandler`` and ``ValidationHandler``.

    Args:
        save_dir: folder of the checkpoint.
        save_dict: ``{"model": network, "optimizer": ..., "lr_scheduler": ..., ...}``.
        filename: checkpoint name.
        resume: load the checkpoint when it exists (``False`` starts from scratch; the file is then
            overwritten at the end of the first epoch).
        fingerprint: a string describing the run (e.g. the dataset); a checkpoint with another
            fingerprint is not resumed (a warning is logged).
        interval: write every ``interval`` epochs (and after the last one). The paper model's checkpoint with
            its AdamW state is 330 MB; on fast GPUs writing it every epoch is a visible share of the epoch, at
            the price of losing up to ``interval`` epochs on a kill.
    """

    def __init__(
        self,
        save_dir: str,
        save_dict: dict[str, Any],
        filename: str = "latest.pt",
        resume: bool = True,
        fingerprint: str = "",
        interval: int = 1,
    ) -> None:
        if int(interval) < 1:
            raise ValueError(f"checkpoint interval must be a positive number of epochs, got {interval}")
        self.path = Path(save_dir) / filename
        self.save_dict = save_dict
        self.resume = resume
        self.fingerprint = str(fingerprint)
        self.interval = int(interval)
        self.resumed_epoch = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.load)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.save)

    def save(self, engine: Engine) -> None:
        epoch = int(engine.state.epoch)
        if not is_main_process() or (epoch % self.interval and epoch != engine.state.max_epochs):
            return
        checkpoint = {
            name: (unwrap_network(obj) if isinstance(obj, torch.nn.Module) else obj).state_dict()
            for name, obj in self.save_dict.items()
        }
        checkpoint["trainer"] = {"epoch": int(engine.state.epoch), "iteration": int(engine.state.iteration)}
        checkpoint["fingerprint"] = self.fingerprint
        atomic_torch_save(checkpoint, self.path)

    def load(self, engine: Engine) -> None:
        if not self.resume or not self.path.is_file():
            return
        try:
            checkpoint = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as err:  # a foreign or damaged file: say which and how to start over
            raise RuntimeError(f"{self.path}: cannot load the resume checkpoint ({err}); "
                               "delete it or pass --resume False to start from scratch") from None
        if checkpoint.get("fingerprint", "") != self.fingerprint:
            engine.logger.warning(
                f"{self.path} belongs to another run ({checkpoint.get('fingerprint')!r} != {self.fingerprint!r}); "
                "starting from scratch (it will be overwritten)"
            )
            return
        for name, obj in self.save_dict.items():
            if name not in checkpoint:
                raise RuntimeError(f"{self.path}: no '{name}' entry; pass --resume False to start from scratch")
            try:
                (unwrap_network(obj) if isinstance(obj, torch.nn.Module) else obj).load_state_dict(checkpoint[name])
            except (RuntimeError, KeyError, ValueError) as err:
                raise RuntimeError(f"{self.path}: '{name}' does not match this run ({err}); "
                                   "pass --resume False to start from scratch") from None
        epoch = int(checkpoint["trainer"]["epoch"])
        engine.state.epoch = epoch
        engine.state.iteration = epoch * engine.state.epoch_length if engine.state.epoch_length else int(
            checkpoint["trainer"]["iteration"])
        self.resumed_epoch = epoch
        if epoch >= engine.state.max_epochs:
            engine.logger.info(f"{self.path}: training already completed {epoch} epochs (raise --epochs to continue)")
        else:
            engine.logger.info(f"resumed from {self.path} at epoch {epoch} (continuing with epoch {epoch + 1})")

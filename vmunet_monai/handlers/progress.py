"""Per-iteration progress log with throughput and ETA (works in log files, unlike a progress bar)."""

from __future__ import annotations

import time

from ignite.engine import Engine, Events

__all__ = ["ProgressLogger", "format_seconds"]


def format_seconds(seconds: float) -> str:
    """``75 -> '1m15s'``, ``3700 -> '1h01m'``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


class ProgressLogger:
    """Log ``epoch e/E  iter i/I  loss  lr  s/it  epoch ETA  run ETA`` every ``interval`` iterations.

    The run ETA uses the measured wall time of whole epochs (validation included) once one epoch has
    completed, and the iteration time before that. Messages go to ``engine.logger`` (silenced on ranks > 0
    by ``multi_gpu_train.json``).

    Args:
        interval: log every ``interval`` iterations (and always on the last iteration of an epoch).
        optimizer: optional optimizer whose first group's learning rate is shown.
    """

    def __init__(self, interval: int = 1, optimizer=None) -> None:
        self.interval = max(1, int(interval))
        self.optimizer = optimizer
        self._epoch_start = 0.0
        self._epoch_times: list[float] = []
        self._last_epoch_end = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)

    def _epoch_started(self, engine: Engine) -> None:
        now = time.perf_counter()
        if self._last_epoch_end is not None:  # the previous epoch's handlers (validation) end here
            self._epoch_times[-1] += now - self._last_epoch_end
        self._epoch_start = now

    def _epoch_completed(self, engine: Engine) -> None:
        self._epoch_times.append(time.perf_counter() - self._epoch_start)
        self._last_epoch_end = time.perf_counter()

    def _iteration_completed(self, engine: Engine) -> None:
        length = engine.state.epoch_length or 1
        step = (engine.state.iteration - 1) % length + 1
        if step % self.interval and step != length:
            return
        elapsed = time.perf_counter() - self._epoch_start
        per_iter = elapsed / step
        remaining_epochs = engine.state.max_epochs - engine.state.epoch
        epoch_time = (sum(self._epoch_times) / len(self._epoch_times)) if self._epoch_times else per_iter * length
        run_eta = per_iter * (length - step) + remaining_epochs * epoch_time
        output = engine.state.output
        loss = output[0].get("loss") if isinstance(output, list) and output and isinstance(output[0], dict) else (
            output.get("loss") if isinstance(output, dict) else None)
        loss_text = f"loss {float(loss):.4f}  " if loss is not None else ""
        lr_text = f"lr {self.optimizer.param_groups[0]['lr']:.2e}  " if self.optimizer is not None else ""
        engine.logger.info(
            f"epoch {engine.state.epoch}/{engine.state.max_epochs}  iter {step}/{length}  {loss_text}{lr_text}"
            f"{per_iter:.2f} s/it  epoch ETA {format_seconds(per_iter * (length - step))}  "
            f"run ETA {format_seconds(run_eta)}"
        )

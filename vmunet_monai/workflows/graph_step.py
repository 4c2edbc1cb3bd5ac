"""A training iteration for MONAI's ``SupervisedTrainer`` that replays the whole step as one CUDA graph.

An eager VM-UNet training step launches ~1,500 kernels (forward, loss, backward, AdamW); at the paper's batch
sizes the host cannot launch them as fast as the GPU runs them, so the GPU idles between kernels. Capturing the
step once as a CUDA graph and replaying it removes that: on the H200 the bf16 batch-32 step runs at the GPU's
own speed (docs/benchmarks.md, ``train_graph`` rows against ``train``).

The replayed step computes what MONAI's ``SupervisedTrainer._iteration`` computes (same forward, loss, backward
and optimizer step, same autocast dtype), with three deliberate differences, all documented on the class: no
GradScaler under bf16 autocast (bf16 needs no loss scaling), autocast without its weight-cast cache (a cache
cannot live across graph replays), and the four iteration events fired after the step instead of inside it.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from monai.engines.utils import IterationEvents
from monai.inferers import SimpleInferer
from monai.utils.enums import CommonKeys as Keys

__all__ = ["CUDAGraphTrainStep"]

# handlers on these events act inside a step (between forward, loss, backward and optimizer), where a replayed
# graph has no place for Python code
_MID_STEP_EVENTS = (IterationEvents.FORWARD_COMPLETED, IterationEvents.LOSS_COMPLETED,
                    IterationEvents.BACKWARD_COMPLETED)


def _plain(t: torch.Tensor) -> torch.Tensor:
    """The tensor itself, as a plain ``torch.Tensor`` (a ``MetaTensor`` dispatches every op through Python)."""
    return t.as_tensor() if hasattr(t, "as_tensor") else t


def _signature(*tensors: torch.Tensor) -> tuple:
    """What a captured step is specialised to: the shape, dtype and device of each tensor."""
    return tuple((tuple(t.shape), t.dtype, t.device) for t in tensors)


class _CapturedStep:
    """One captured training step: the graph, its static input / target / prediction / loss, and what the
    capture depended on."""

    def __init__(self, graph, static_input, static_target, static_pred, static_loss, depends_on):
        self.graph = graph
        self.static_input = static_input
        self.static_target = static_target
        self.static_pred = static_pred
        self.static_loss = static_loss
        self.depends_on = depends_on


class CUDAGraphTrainStep:
    """``iteration_update`` of ``monai.engines.SupervisedTrainer`` that runs each training step as a replayed
    CUDA graph once it can, and MONAI's own iteration otherwise.

    The first ``warmup`` iterations run the step eagerly on a side stream (loading and compiling every kernel the
    capture records: nothing may be compiled or loaded during a capture); the next one captures the step with its
    batch and replays it; later batches of the same shape, dtype and device are copied into the graph's input
    buffers and replayed. The
    learning rate is read from a device tensor refreshed before every replay, so LR schedulers work as in eager
    training; a change of any other optimizer hyperparameter, of the optimizer's state objects (``load_state_dict``)
    or of the network's parameter tensors triggers one eager step and a new capture.

    It falls back to ``engine._iteration`` (logged once per reason) when a graph would not compute the same step:
    not enabled, not a CUDA device, a ``torch.compile``d network, gradient accumulation, fp16 autocast (needs the
    GradScaler's dynamic loss scaling, which skips steps from the host), a DataParallel / DDP network (the gradient
    all-reduce is not captured here), an optimizer without a ``capturable`` option (AdamW, Adam and most of
    ``torch.optim`` have one), an inferer other than ``SimpleInferer`` and its subclasses, or handlers attached to
    ``FORWARD_COMPLETED`` / ``LOSS_COMPLETED`` / ``BACKWARD_COMPLETED`` (they would need to run inside the step).
    A batch whose shape differs from the captured one (the last, smaller batch of an epoch) runs eagerly, as does
    every step if the capture itself fails (the error is logged).

    Differences from MONAI's iteration, by design (for the warm-up and replayed steps):
        - bf16 autocast runs without ``GradScaler``: bf16 has float32's exponent range, so MONAI's scaling by a
          power of two and unscaling change no value; what the scaler adds is skipping steps whose gradients are
          not finite. Here ``check_finite`` instead stops training with an error naming the epoch and iteration
          when a replayed step's loss is not finite (at the latest at the end of its epoch, before that epoch's
          checkpoint is written).
        - autocast runs with ``cache_enabled=False`` (the same casts, recomputed for every use of a weight).
        - the iteration events are fired after the step, in MONAI's order; the output's loss and prediction are
          detached copies.
        - the optimizer is switched to ``capturable=True`` (its step counters move to the GPU) at the first
          iteration this class handles; the update it computes is the same.

    Args:
        enabled: False = always MONAI's own iteration (the bundles' ``cuda_graph`` setting).
        warmup: eager iterations before the capture (>= 1).
        check_finite: raise ``FloatingPointError`` when a replayed step's loss is NaN or infinite; checked just
            before the next replay and at the end of each epoch, before the epoch's handlers (checkpoints) run.

    Example::

        >>> from monai.engines import SupervisedTrainer
        >>> trainer = SupervisedTrainer(device=torch.device("cuda"), max_epochs=1, train_data_loader=loader,
        ...                             network=net, optimizer=opt, loss_function=loss,
        ...                             iteration_update=CUDAGraphTrainStep())  # doctest: +SKIP
    """

    def __init__(self, enabled: bool = True, warmup: int = 3, check_finite: bool = True) -> None:
        if warmup < 1:
            raise ValueError(f"warmup must be >= 1 (the first steps compile kernels), got {warmup}.")
        self.enabled = bool(enabled)
        self.warmup = int(warmup)
        self.check_finite = bool(check_finite)
        self.captured: _CapturedStep | None = None
        self.eager_steps = 0
        self.replayed_steps = 0
        self._warmed = 0
        self._side_stream: torch.cuda.Stream | None = None
        self._capture_failed = False
        self._step_signature: tuple | None = None
        self._lrs: list[torch.Tensor] | None = None
        self._pending: tuple | None = None  # (loss, epoch, iteration) of a replayed step not yet checked
        self._logged: set[str] = set()

    # --- when a graph is used -----------------------------------------------------------------------------------

    def unsupported_reason(self, engine: Any) -> str | None:
        """Why this engine's steps cannot be replayed as a graph, or None if they can."""
        if not self.enabled:
            return "disabled (cuda_graph=False)"
        if getattr(engine, "compile", False):
            return "the network is torch.compile'd"
        if getattr(engine, "accumulation_steps", 1) > 1:
            return "gradient accumulation (accumulation_steps > 1)"
        if getattr(engine, "amp", False) and engine.amp_kwargs.get("dtype", torch.float16) == torch.float16:
            return "fp16 autocast needs GradScaler's dynamic loss scaling"
        if isinstance(engine.network, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
            return "a DataParallel / DistributedDataParallel network"
        if "capturable" not in getattr(engine.optimizer, "defaults", {}):
            return f"{type(engine.optimizer).__name__} has no capturable option"
        if not isinstance(engine.inferer, SimpleInferer):
            return f"inferer {type(engine.inferer).__name__} (only SimpleInferer and its subclasses are captured)"
        handlers = getattr(engine, "_event_handlers", {})
        busy = [str(e) for e in _MID_STEP_EVENTS if handlers.get(e)]
        if busy:
            return f"handlers attached to {', '.join(busy)}"
        device = engine.state.device
        if device is None or torch.device(device).type != "cuda":
            return f"device {device} is not CUDA"
        if self._capture_failed:
            return "the capture failed (logged above)"
        return None

    def _log_once(self, engine: Any, key: str, message: str, level: int = logging.INFO) -> None:
        if key not in self._logged:
            self._logged.add(key)
            engine.logger.log(level, message)

    # --- the iteration ------------------------------------------------------------------------------------------

    def __call__(self, engine: Any, batchdata: Any) -> dict:
        reason = self.unsupported_reason(engine)
        if reason is not None:
            self._log_once(engine, "reason:" + reason, f"CUDA-graph training step not used: {reason}.")
            return self._eager(engine, batchdata)
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        # the previous step's loss is checked only now, after this batch was fetched and its copy queued, so that
        # the host prepares a step while the GPU runs the previous one
        self._check_pending_loss()
        if len(batch) != 2:
            self._log_once(engine, "args", "CUDA-graph training step not used: the batch carries extra network "
                                           "arguments.")
            return self._eager(engine, batchdata)
        inputs, targets = batch
        x, y = _plain(inputs), _plain(targets)
        signature = _signature(x, y)
        if self._step_signature is None:
            # captured for the shape of the first batch (the full batch size; an epoch's last batch may be smaller)
            self._step_signature = signature
        if signature != self._step_signature:
            self._log_once(engine, "shape:" + str(signature),
                           f"CUDA-graph training step: batch {tuple(x.shape)} differs from the captured "
                           f"{self._step_signature[0][0]}; MONAI's eager iteration for such batches.")
            return self._eager(engine, batchdata)
        self._make_capturable(engine.optimizer)
        if self.captured is not None and not self._still_valid(engine):
            self.captured = None  # frees the graph's memory pool before a new capture
            self._warmed = min(self._warmed, self.warmup - 1)  # one eager step of the changed step first
        lrs = self._learning_rates(engine.optimizer, x.device)
        if self._warmed < self.warmup:
            self._warmed += 1
            pred, loss = self._warmup_step(engine, x, y, lrs)
            return self._finish(engine, inputs, targets, pred, loss)
        if self.captured is None:
            try:
                self.captured = self._capture(engine, x, y, lrs)
            except Exception as err:  # report and train on eagerly: no batch is lost
                self._capture_failed = True
                self.captured = None
                engine.optimizer.zero_grad(set_to_none=True)
                engine.logger.warning(f"CUDA-graph capture of the training step failed ({type(err).__name__}: {err});"
                                      " training continues with MONAI's eager iteration.", exc_info=True)
                return self._eager(engine, batchdata)
            engine.logger.info(f"CUDA-graph training step captured for input {tuple(x.shape)} {x.dtype}, target "
                               f"{tuple(y.shape)} {y.dtype}.")
        step = self.captured
        step.static_input.copy_(x, non_blocking=True)
        step.static_target.copy_(y, non_blocking=True)
        step.graph.replay()
        self.replayed_steps += 1
        return self._finish(engine, inputs, targets, step.static_pred.detach().clone(),
                            step.static_loss.detach().clone())

    def _eager(self, engine: Any, batchdata: Any) -> dict:
        """MONAI's own iteration (with its GradScaler under autocast)."""
        self.eager_steps += 1
        self._capturable_only_on_gpus(engine.optimizer)
        return engine._iteration(engine, batchdata)

    @staticmethod
    def _capturable_only_on_gpus(optimizer: torch.optim.Optimizer) -> None:
        # a checkpoint written by a graph-trained run stores capturable=True; torch refuses a capturable step on
        # CPU parameters, so resuming such a checkpoint on a CPU machine turns it off again (same update)
        for group in getattr(optimizer, "param_groups", []):
            if group.get("capturable") and any(p.device.type == "cpu" for p in group["params"]):
                group["capturable"] = False

    def _finish(self, engine: Any, inputs: Any, targets: Any, pred: torch.Tensor, loss: torch.Tensor) -> dict:
        if self.check_finite:
            self._pending = (loss, engine.state.epoch, engine.state.iteration)
            length = engine.state.epoch_length
            if length and engine.state.iteration % length == 0:
                self._check_pending_loss()  # before the epoch's handlers (checkpoints) run
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets, Keys.PRED: pred, Keys.LOSS: loss}
        for event in (*_MID_STEP_EVENTS, IterationEvents.MODEL_COMPLETED):
            engine.fire_event(event)
        return engine.state.output

    # --- optimizer ----------------------------------------------------------------------------------------------

    @staticmethod
    def _make_capturable(optimizer: torch.optim.Optimizer) -> None:
        """``capturable=True`` on every group, the step counters of existing state (a resumed checkpoint, eager
        steps) moved to their parameters' device as float32, which is where a capturable optimizer keeps them."""
        for group in optimizer.param_groups:
            if group.get("capturable") is True:
                continue
            group["capturable"] = True
            for p in group["params"]:
                state = optimizer.state.get(p)
                step = state.get("step") if state else None
                if isinstance(step, torch.Tensor) and step.device != p.device:
                    state["step"] = step.to(device=p.device, dtype=torch.float32)

    @staticmethod
    def _hyperparameters(optimizer: torch.optim.Optimizer) -> list[dict]:
        # what a captured optimizer step bakes in: every group setting except the learning rate (read from a
        # device tensor) and the parameter list (checked by tensor identity)
        return [{k: v for k, v in g.items() if k not in ("params", "lr")} for g in optimizer.param_groups]

    def _depends_on(self, engine: Any) -> tuple:
        opt = engine.optimizer
        params = tuple(p for g in opt.param_groups for p in g["params"])
        # the optimizer's parameter objects and the network's parameter storage (which covers those same tensors)
        return (id(opt.state), id(opt.param_groups), tuple(id(p) for p in params), repr(self._hyperparameters(opt)),
                tuple(p.data_ptr() for p in engine.network.parameters()))

    def _still_valid(self, engine: Any) -> bool:
        if self._depends_on(engine) == self.captured.depends_on:
            return True
        engine.logger.info("CUDA-graph training step: the optimizer settings, its state or the network's parameter "
                           "tensors changed since the capture; capturing again.")
        return False

    # --- capture and replay -------------------------------------------------------------------------------------

    def _autocast(self, engine: Any):
        enabled = bool(getattr(engine, "amp", False))
        dtype = engine.amp_kwargs.get("dtype", torch.bfloat16) if enabled else torch.float32
        return torch.autocast("cuda", dtype=dtype, enabled=enabled, cache_enabled=False)

    def _learning_rates(self, optimizer: torch.optim.Optimizer, device: torch.device) -> list[torch.Tensor]:
        """One device tensor per parameter group holding its current learning rate: the captured step reads these
        (kept for the graph's lifetime), so a schedule that changes ``group["lr"]`` reaches every replay."""
        groups = optimizer.param_groups
        if self._lrs is None or len(self._lrs) != len(groups) or self._lrs[0].device != device:
            self._lrs = [torch.zeros((), device=device, dtype=torch.float32) for _ in groups]
        for lr, group in zip(self._lrs, groups):
            if isinstance(group["lr"], torch.Tensor):
                lr.copy_(group["lr"])
            else:
                lr.fill_(float(group["lr"]))
        return self._lrs

    def _step(self, engine: Any, x: torch.Tensor, y: torch.Tensor, lrs: list[torch.Tensor]):
        """The training step as captured: forward and loss under autocast, backward, optimizer step reading the
        learning rates from ``lrs``; returns the prediction and the loss."""
        groups = engine.optimizer.param_groups
        saved = [g["lr"] for g in groups]
        try:
            for group, lr in zip(groups, lrs):
                group["lr"] = lr
            with self._autocast(engine):
                pred = engine.inferer(x, engine.network)
                loss = engine.loss_function(pred, y).mean()
            loss.backward()
            engine.optimizer.step()
        finally:
            for group, lr in zip(groups, saved):
                group["lr"] = lr
        return pred, loss

    def _warmup_step(self, engine: Any, x: torch.Tensor, y: torch.Tensor, lrs: list[torch.Tensor]):
        """The same step run eagerly on a side stream, as PyTorch's whole-network capture recipe warms up: every
        kernel the capture will record (the optimizer's tensor-learning-rate kernels too) is loaded and compiled
        before it, and nothing is tied to the capturing stream."""
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=True)
        self.eager_steps += 1
        current = torch.cuda.current_stream(x.device)
        if self._side_stream is None:
            self._side_stream = torch.cuda.Stream(device=x.device)
        self._side_stream.wait_stream(current)
        with torch.cuda.stream(self._side_stream):
            pred, loss = self._step(engine, x, y, lrs)
            # detached: the output must not keep this step's autograd graph (built on the side stream) alive
            pred, loss = pred.detach(), loss.detach()
        current.wait_stream(self._side_stream)
        return pred, loss

    def _capture(self, engine: Any, x: torch.Tensor, y: torch.Tensor, lrs: list[torch.Tensor]) -> _CapturedStep:
        engine.network.train()
        engine.state.output = None  # nothing of the previous step is needed during the capture
        static_input, static_target = x.clone(), y.clone()
        engine.optimizer.zero_grad(set_to_none=True)  # the graph's backward then writes (not adds) the gradients
        graph = torch.cuda.CUDAGraph()
        # thread_local: the DataLoader's pin-memory thread may allocate while this thread captures
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            static_pred, static_loss = self._step(engine, static_input, static_target, lrs)
        return _CapturedStep(graph, static_input, static_target, static_pred, static_loss, self._depends_on(engine))

    def _check_pending_loss(self) -> None:
        if self._pending is None:
            return
        loss, epoch, iteration = self._pending
        self._pending = None
        if not bool(torch.isfinite(loss)):
            raise FloatingPointError(
                f"training loss is {loss.item()} at epoch {epoch}, iteration {iteration} (CUDA-graph step); training "
                "stopped before a checkpoint could store the weights that step updated.")

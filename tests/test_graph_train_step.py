"""CUDAGraphTrainStep: MONAI's own iteration where a graph cannot replay the step; on CUDA the replayed step
trains like the eager one (GPU tests skip on CPU)."""

from __future__ import annotations

import logging

import pytest
import torch
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.inferers import SlidingWindowInferer
from ignite.engine import Events

from vmunet_monai.losses import BceDiceLoss
from vmunet_monai.networks import VMUNet
from vmunet_monai.workflows import CUDAGraphTrainStep
from vmunet_monai.workflows.inferers import PlainTensorInferer

TINY = dict(dims=(8, 16, 32, 64), depths=(1, 1, 1, 1), depths_decoder=(1, 1, 1, 1), d_state=4, drop_path_rate=0.0)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _batches(n_images: int, batch: int, size: int = 64, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n_images, 3, size, size, generator=g)
    labels = (torch.rand(n_images, 1, size, size, generator=g) > 0.5).float()
    return [{"image": images[i:i + batch], "label": labels[i:i + batch]} for i in range(0, n_images, batch)]


def _trainer(device: str, step=None, epochs: int = 1, data=None, amp: bool = False, lr_decay: float = 1.0,
             backend: str = "auto", **kwargs) -> SupervisedTrainer:
    torch.manual_seed(0)
    net = VMUNet(scan_backend=backend, **TINY).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-2)
    trainer = SupervisedTrainer(device=torch.device(device), max_epochs=epochs,
                                train_data_loader=data if data is not None else _batches(10, 4),
                                network=net, optimizer=opt, loss_function=BceDiceLoss(), inferer=PlainTensorInferer(),
                                amp=amp, amp_kwargs={"dtype": torch.bfloat16}, iteration_update=step, decollate=False,
                                **kwargs)
    trainer.losses = []
    trainer.lrs = []

    @trainer.on(Events.ITERATION_COMPLETED)
    def _record(engine):
        engine.losses.append(engine.state.output["loss"].item())
        engine.lrs.append(opt.param_groups[0]["lr"])
        for group in opt.param_groups:  # an LR schedule that changes every iteration
            group["lr"] *= lr_decay

    return trainer


def test_cpu_runs_monai_iteration(caplog):
    step = CUDAGraphTrainStep()
    graphed, eager = _trainer("cpu", step, epochs=2, backend="torch"), _trainer("cpu", None, epochs=2, backend="torch")
    with caplog.at_level(logging.INFO):
        graphed.run()
    eager.run()
    assert graphed.losses == eager.losses and len(graphed.losses) == 6
    for a, b in zip(graphed.network.parameters(), eager.network.parameters()):
        assert torch.equal(a, b)
    assert step.eager_steps == 6 and step.replayed_steps == 0 and step.captured is None
    assert "CUDA-graph training step not used: device cpu is not CUDA" in caplog.text
    assert caplog.text.count("not used") == 1  # logged once, not per iteration


def test_resuming_a_graph_trained_optimizer_on_cpu():
    # a checkpoint of a graph-trained run has capturable=True in its optimizer groups, which torch refuses on CPU
    step = CUDAGraphTrainStep()
    trainer = _trainer("cpu", step, backend="torch")
    for group in trainer.optimizer.param_groups:
        group["capturable"] = True
    trainer.run()
    assert len(trainer.losses) == 3 and not any(g["capturable"] for g in trainer.optimizer.param_groups)


def test_unsupported_reasons():
    step = CUDAGraphTrainStep()
    trainer = _trainer("cpu", step, backend="torch")
    assert step.unsupported_reason(trainer) == "device cpu is not CUDA"
    assert CUDAGraphTrainStep(enabled=False).unsupported_reason(trainer) == "disabled (cuda_graph=False)"

    trainer.accumulation_steps = 2
    assert "accumulation" in step.unsupported_reason(trainer)
    trainer.accumulation_steps = 1
    trainer.amp, trainer.amp_kwargs = True, {"dtype": torch.float16}
    assert "fp16 autocast" in step.unsupported_reason(trainer)
    trainer.amp_kwargs = {}  # torch.autocast's CUDA default is fp16 too
    assert "fp16 autocast" in step.unsupported_reason(trainer)
    trainer.amp_kwargs = {"dtype": torch.bfloat16}
    assert step.unsupported_reason(trainer) == "device cpu is not CUDA"

    net = trainer.network
    trainer.network = torch.nn.DataParallel(net)
    assert "DataParallel" in step.unsupported_reason(trainer)
    trainer.network = net
    opt = trainer.optimizer
    trainer.optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    assert step.unsupported_reason(trainer) == "SGD has no capturable option"
    trainer.optimizer = opt
    inferer = trainer.inferer
    trainer.inferer = SlidingWindowInferer(roi_size=(32, 32))
    assert "SlidingWindowInferer" in step.unsupported_reason(trainer)
    trainer.inferer = inferer
    trainer.add_event_handler(IterationEvents.BACKWARD_COMPLETED, lambda engine: None)
    assert "backward_completed" in step.unsupported_reason(trainer).lower()


def test_invalid_warmup():
    with pytest.raises(ValueError, match="warmup"):
        CUDAGraphTrainStep(warmup=0)


def test_make_capturable_keeps_resumed_state():
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    net(torch.randn(4, 3)).sum().backward()
    opt.step()
    before = {k: v.clone() for k, v in opt.state[net.weight].items()}
    CUDAGraphTrainStep._make_capturable(opt)
    assert all(g["capturable"] for g in opt.param_groups)
    for key, value in before.items():
        assert torch.equal(opt.state[net.weight][key].cpu().float(), value.float())


# --- CUDA: the replayed step against MONAI's eager iteration ------------------------------------------------------


def _cuda_pair(amp: bool, epochs: int = 2, lr_decay: float = 0.9):
    data = _batches(14, 4)  # 4 batches per epoch, the last one of 2 images (an eager step)
    step = CUDAGraphTrainStep(warmup=2)
    graphed = _trainer("cuda", step, epochs=epochs, data=data, amp=amp, lr_decay=lr_decay)
    eager = _trainer("cuda", None, epochs=epochs, data=data, amp=amp, lr_decay=lr_decay)
    graphed.run()
    eager.run()
    return step, graphed, eager


@cuda
@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16"])
def test_replayed_steps_train_like_eager_steps(amp):
    step, graphed, eager = _cuda_pair(amp)
    assert step.captured is not None and step.replayed_steps == 4  # 8 steps: 2 warm-up, 2 partial, 4 replayed
    assert step.eager_steps == 4
    assert graphed.lrs == eager.lrs and graphed.lrs[-1] < graphed.lrs[0]  # the schedule reached the graph
    tol = 1e-4 if not amp else 2e-2
    torch.testing.assert_close(torch.tensor(graphed.losses), torch.tensor(eager.losses), rtol=tol, atol=tol)
    if not amp:
        # cuBLAS may pick other kernels inside a capture, and Adam turns last-bit differences of near-zero
        # gradients into whole steps of size ~lr for single weights; so the weights are compared as a whole: the
        # two runs' difference against the distance the weights travelled. (In bf16 the runs' rounding differs
        # from the first replay on, and tiny-network trajectories drift apart within bf16 noise: losses only.)
        start = _trainer("cuda", None).network.parameters()  # the same seed: the initial weights
        flat = [torch.cat([p.detach().flatten() for p in params]) for params in
                (graphed.network.parameters(), eager.network.parameters(), start)]
        assert (flat[0] - flat[1]).norm() < 0.02 * (flat[1] - flat[2]).norm()
    assert all(g["capturable"] for g in graphed.optimizer.param_groups)


@cuda
def test_learning_rate_reaches_the_graph():
    # with lr 0 from the 4th iteration on, replayed steps must not move the weights (a graph that baked in the
    # learning rate of its capture would)
    data = _batches(16, 4)
    step = CUDAGraphTrainStep(warmup=2)
    trainer = _trainer("cuda", step, epochs=1, data=data)

    @trainer.on(Events.ITERATION_COMPLETED(once=2))
    def _zero_lr(engine):
        for group in engine.optimizer.param_groups:
            group["lr"] = 0.0
        engine.snapshot = [p.detach().clone() for p in engine.network.parameters()]

    trainer.run()
    assert step.replayed_steps == 2
    # AdamW's decoupled weight decay is lr * wd too, so lr 0 freezes the weights exactly
    for a, b in zip(trainer.network.parameters(), trainer.snapshot):
        assert torch.equal(a, b)


@cuda
def test_changed_hyperparameter_recaptures_and_nan_stops(caplog):
    data = _batches(24, 4)  # 6 iterations
    step = CUDAGraphTrainStep(warmup=1)
    trainer = _trainer("cuda", step, epochs=1, data=data)

    @trainer.on(Events.ITERATION_COMPLETED(once=2))
    def _change_wd(engine):  # iteration 2 was the first replay; iteration 3 must capture again
        engine.optimizer.param_groups[0]["weight_decay"] = 0.5

    @trainer.on(Events.ITERATION_COMPLETED(once=3))
    def _poison(engine):
        with torch.no_grad():
            next(engine.network.parameters()).fill_(float("nan"))

    # iteration 4's loss is NaN; it is checked before iteration 5's replay, which therefore never runs
    with caplog.at_level(logging.INFO), pytest.raises(FloatingPointError, match="epoch 1, iteration 4"):
        trainer.run()
    assert "capturing again" in caplog.text
    assert caplog.text.count("CUDA-graph training step captured") == 2
    # replays: iteration 2 and (after one eager step of the changed settings) iteration 4
    assert step.replayed_steps == 2 and step.eager_steps == 2 and trainer.state.iteration == 5

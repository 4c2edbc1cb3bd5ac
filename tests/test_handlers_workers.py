"""ReleaseDataLoaderWorkers: worker processes are gone when the run ends, not at interpreter exit."""

from __future__ import annotations

import multiprocessing

import pytest
import torch
from ignite.engine import Engine, Events
from torch.utils.data import DataLoader, TensorDataset

from vmunet_monai.handlers import ReleaseDataLoaderWorkers, shutdown_loader_workers


def _loader(persistent: bool) -> DataLoader:
    return DataLoader(TensorDataset(torch.arange(12.0)), batch_size=4, num_workers=2, persistent_workers=persistent)


def _workers() -> list:
    return [p for p in multiprocessing.active_children() if "worker" in p.name.lower() or p.daemon]


@pytest.mark.parametrize("persistent", [True, False])
def test_workers_stopped_at_completion(persistent):
    train, val = _loader(persistent), _loader(persistent)
    seen = []
    engine = Engine(lambda eng, batch: seen.append(batch[0].sum().item()))
    validator = Engine(lambda eng, batch: None)
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda _: validator.run(val))
    ReleaseDataLoaderWorkers([train, val]).attach(engine)
    probe = []
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda _: probe.append(len(_workers())))
    engine.run(train, max_epochs=2, epoch_length=2)  # ends by length: the iterator is not exhausted
    assert probe[0] >= 2  # workers were alive during the run
    assert _workers() == [] and getattr(train, "_iterator", None) is None
    assert len(seen) == 4 and sorted(seen)[0] == 6.0  # the data was really read through the workers


def test_shutdown_is_idempotent_and_loader_restarts():
    loader = _loader(True)
    assert [b[0].tolist() for b in loader][0] == [0.0, 1.0, 2.0, 3.0]
    assert shutdown_loader_workers(loader) is True and _workers() == []
    assert shutdown_loader_workers(loader) is False  # nothing left to stop
    assert sum(len(b[0]) for b in loader) == 12  # iterating again starts fresh workers
    shutdown_loader_workers(loader)


def test_single_process_loader_is_ignored():
    loader = DataLoader(TensorDataset(torch.arange(4.0)), batch_size=2, num_workers=0)
    list(loader)
    assert shutdown_loader_workers(loader) is False

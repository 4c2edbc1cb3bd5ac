"""Stop DataLoader worker processes when a run ends, while the interpreter is still fully alive."""

from __future__ import annotations

import atexit
import logging
import weakref
from collections.abc import Sequence

from ignite.engine import Engine, Events
from torch.utils.data import DataLoader

__all__ = ["ReleaseDataLoaderWorkers", "shutdown_loader_workers"]

logger = logging.getLogger(__name__)


def _shutdown_iterator(iterator) -> bool:
    shutdown = getattr(iterator, "_shutdown_workers", None)  # multi-process iterators only
    if shutdown is None:
        return False
    shutdown()
    return True


def shutdown_loader_workers(loader: DataLoader, engine: Engine | None = None) -> bool:
    """Shut down the worker processes of ``loader`` (and of ``engine``'s current iterator); True if any ran.

    A ``DataLoader`` with ``persistent_workers=True`` keeps its iterator, and ignite keeps the iterator of an
    epoch that ended by length rather than by exhaustion; either way the workers are only stopped when the
    iterator is garbage-collected at interpreter exit. On Python 3.12 that happens after the queues' feeder
    threads are gone, so each worker ignores the stop message and is killed after a 5 s join timeout: a
    bundle run with 12 training and 12 validation workers sat 2 minutes after "Engine run finished"
    (measured on the H200 machine). Stopping them here takes well under a second.
    """
    stopped = False
    if engine is not None:
        iterator = getattr(engine, "_dataloader_iter", None)
        if iterator is not None and _shutdown_iterator(iterator):
            engine._dataloader_iter = None
            stopped = True
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None and _shutdown_iterator(iterator):
        loader._iterator = None
        stopped = True
    return stopped


class ReleaseDataLoaderWorkers:
    """Stop the worker processes of ``loaders`` when the engine completes or is terminated.

    Attach it to the engine whose end means the loaders are no longer needed: the trainer for the training
    and validation loaders of a training run, the evaluator of a one-off evaluation or inference. The same
    is done once at interpreter exit (before ``multiprocessing`` tears its queues down) for a run that ended
    with an exception. The loaders restart their workers if they are iterated again.

    Args:
        loaders: the DataLoaders to release (``None`` entries are ignored).

    Example::

        "handlers": [..., {"_target_": "vmunet_monai.handlers.ReleaseDataLoaderWorkers",
                           "loaders": ["@train#dataloader", "@validate#dataloader"]}]
    """

    def __init__(self, loaders: Sequence[DataLoader | None] | DataLoader) -> None:
        if isinstance(loaders, DataLoader):
            loaders = [loaders]
        self.loaders = [loader for loader in loaders if loader is not None]
        self._engine: weakref.ref | None = None
        # atexit runs handlers last-registered-first: this one runs before multiprocessing's own clean-up
        atexit.register(_release_at_exit, weakref.WeakMethod(self.release))

    def attach(self, engine: Engine) -> None:
        self._engine = weakref.ref(engine)
        engine.add_event_handler(Events.COMPLETED, self._on_end)
        engine.add_event_handler(Events.TERMINATE, self._on_end)

    def _on_end(self, engine: Engine) -> None:
        self.release()

    def release(self) -> None:
        """Stop the workers now."""
        engine = self._engine() if self._engine is not None else None
        for index, loader in enumerate(self.loaders):
            try:
                shutdown_loader_workers(loader, engine if index == 0 else None)
            except Exception as err:  # never let clean-up hide the run's own result
                logger.warning(f"could not stop DataLoader workers: {err}")


def _release_at_exit(release_ref: weakref.WeakMethod) -> None:
    release = release_ref()
    if release is not None:
        release()

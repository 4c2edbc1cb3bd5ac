"""Small helpers shared by the handlers: rank checks and atomic file writes."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["is_main_process", "world_size", "collective_device", "atomic_torch_save", "atomic_write_text", "atomic_write_json", "unwrap_network"]


def is_main_process() -> bool:
    """True on rank 0 of a distributed run, and always without ``torch.distributed``."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def world_size() -> int:
    """Number of ranks of the distributed run (1 without ``torch.distributed``)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def collective_device() -> torch.device:
    """Where tensors for collectives must live: the rank's current CUDA device for NCCL, else the CPU."""
    if world_size() > 1 and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _atomic_write(path: str | Path, write) -> None:
    # write to a temporary file of the same folder, then rename: a kill at any moment leaves either
    # the old complete file or the new complete file, never a truncated one.
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` through a temporary file and ``os.replace``."""
    _atomic_write(path, lambda handle: torch.save(obj, handle))


def atomic_write_text(text: str, path: str | Path) -> None:
    """Write ``text`` atomically."""
    _atomic_write(path, lambda handle: handle.write(text.encode()))


def atomic_write_json(obj: Any, path: str | Path) -> None:
    """Write ``obj`` as indented JSON atomically."""
    atomic_write_text(json.dumps(obj, indent=2) + "\n", path)


def unwrap_network(network: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside ``DistributedDataParallel``/``DataParallel`` (so keys have no ``module.``)."""
    return network.module if hasattr(network, "module") and isinstance(network.module, torch.nn.Module) else network

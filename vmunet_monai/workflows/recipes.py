"""Training recipes and small runtime helpers referenced by the bundle configs.

The configs stay declarative: they read every hyper-parameter from a ``recipe`` dictionary computed
here from the dataset, and every value remains overridable on the command line (``--epochs``,
``--batch_size``, ``--image_size``, ``--network_def#dims ...``).

- **paper** (any real dataset): the published ISIC recipe: AdamW lr 1e-3, weight decay 1e-2,
  CosineAnnealingLR(T_max=50, eta_min=1e-5) stepped per epoch, batch 32, 300 epochs, 256 x 256,
  the paper network (dims 96-768, depths 2-2-2-2 / 2-2-2-1, d_state 16, drop path 0.2).
- **demo** (a datalist marked ``"recipe": "demo"``, i.e. the embedded 36-image sample): a short CPU
  schedule at a small size so that ``python -m monai.bundle run training --config_file
  configs/train.json`` with no argument finishes in a few minutes on two CPU cores (1 min 50 s measured
  on a quiet 2-core machine). Same network, optimiser, loss and augmentation; 12 epochs, batch 4,
  96 x 96, cosine period matched to the epochs; checkpoints in ``models/demo``. It shows the whole
  workflow; it is not a paper reproduction.

Inference and evaluation read ``models/model_info.json`` (written beside ``models/model.pt`` by the
training run) to rebuild the trained network and image size; without it they use the paper values.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

__all__ = [
    "PAPER_RECIPE",
    "DEMO_RECIPE",
    "isic_recipe",
    "model_info",
    "default_device",
    "distributed_device",
    "default_dist_backend",
    "ddp_device_ids",
    "set_cuda_device",
    "amp_kwargs",
    "require_file",
    "default_num_workers",
    "load_pretrained",
]

PAPER_NETWORK = {
    "depths": [2, 2, 2, 2],
    "depths_decoder": [2, 2, 2, 1],
    "dims": [96, 192, 384, 768],
    "d_state": 16,
    "drop_path_rate": 0.2,
}

PAPER_RECIPE = {
    "name": "paper",
    "epochs": 300,
    "batch_size": 32,
    "image_size": 256,
    "lr": 1e-3,
    "weight_decay": 1e-2,
    "t_max": 50,
    "eta_min": 1e-5,
    "val_interval": 1,
    "log_interval": 10,
    "network": PAPER_NETWORK,
    # real-data runs write where MONAI tools and MONAI Label look for weights (models/model.pt)
    "ckpt_subdir": "models",
}

DEMO_RECIPE = {
    "name": "demo",
    "epochs": 12,
    "batch_size": 4,
    "image_size": 96,
    "lr": 1e-3,
    "weight_decay": 1e-2,
    "t_max": 12,
    "eta_min": 1e-5,
    "val_interval": 1,
    "log_interval": 1,
    # the demo writes beside, never over, the shipped trained weights in models/model.pt
    "ckpt_subdir": "models/demo",
    # the paper network itself: with the `cpu` scan backend 12 epochs at 96 px take about 2 minutes on 2 cores
    "network": PAPER_NETWORK,
}

RECIPES = {"paper": PAPER_RECIPE, "demo": DEMO_RECIPE}


def isic_recipe(dataset_dir: str, recipe: str = "auto") -> dict:
    """The recipe for ``dataset_dir``: ``demo`` when its ``datalist.json`` says ``"recipe": "demo"``, else ``paper``.

    Args:
        dataset_dir: the training data folder (see :func:`vmunet_monai.data.load_isic_datalist`).
        recipe: ``"auto"`` (decide from the data), ``"paper"`` or ``"demo"``.

    Example:
        >>> isic_recipe("/data/isic2017")["epochs"]
        300
    """
    if recipe == "auto":
        recipe = "paper"
        datalist = Path(dataset_dir) / "datalist.json"
        if datalist.is_file():
            try:
                recipe = json.loads(datalist.read_text()).get("recipe", "paper")
            except (OSError, ValueError):
                recipe = "paper"
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of {sorted(RECIPES)} or 'auto'")
    return json.loads(json.dumps(RECIPES[recipe]))  # a deep copy


def model_info(ckpt_dir: str, filename: str = "model_info.json") -> dict:
    """Facts about the trained model (image size, network arguments); paper values when absent.

    Returns a dict with ``image_size`` and ``network`` (VMUNet keyword arguments).
    """
    info = {"image_size": PAPER_RECIPE["image_size"], "network": dict(PAPER_NETWORK)}
    path = Path(ckpt_dir) / filename
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"{path}: cannot read the model description ({err})") from None
        info["image_size"] = int(saved.get("image_size", info["image_size"]))
        info["network"].update(saved.get("network", {}))
    return info


def default_device() -> torch.device:
    """``cuda:0`` when CUDA is available, else CPU."""
    return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")


def distributed_device() -> torch.device:
    """``cuda:<LOCAL_RANK>`` under torchrun with CUDA, else CPU."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    return torch.device("cpu")


def default_dist_backend() -> str:
    """``nccl`` with CUDA, ``gloo`` otherwise (CPU test runs)."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def ddp_device_ids(device: torch.device | str) -> list | None:
    """``device_ids`` for ``DistributedDataParallel``: ``[device]`` on CUDA, ``None`` on CPU."""
    device = torch.device(device)
    return [device] if device.type == "cuda" else None


def set_cuda_device(device: torch.device | str) -> None:
    """``torch.cuda.set_device`` for CUDA devices; nothing on CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)


def amp_kwargs(dtype: str = "bfloat16") -> dict:
    """``amp_kwargs`` of MONAI engines: autocast dtype ``bfloat16`` (default) or ``float16``."""
    if dtype not in ("bfloat16", "float16"):
        raise ValueError(f"amp_dtype must be 'bfloat16' or 'float16', got {dtype!r}")
    return {"dtype": getattr(torch, dtype)}


def require_file(path: str, hint: str = "train a model first (vmunet-monai train)") -> str:
    """Return ``path`` if it is a file, else raise ``FileNotFoundError`` naming it and what to do."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: not found; {hint}")
    return str(path)


def default_num_workers(recipe: dict | None = None) -> int:
    """Data loader workers: 0 for the demo (2-core CPU), else up to 8 (one per CPU core)."""
    if recipe is not None and recipe.get("name") == "demo":
        return 0
    return min(8, os.cpu_count() or 1)


def load_pretrained(network: torch.nn.Module, path: str = "", kind: str = "vmamba") -> torch.nn.Module:
    """Initialise ``network`` from pretrained weights before training (``--pretrained_weights``).

    Args:
        network: the VMUNet (``@network_def``).
        path: weights file; ``""`` (the default) trains from scratch.
        kind: ``"vmamba"``: VMamba v0 ImageNet weights mapped into encoder and decoder as published
            (e.g. ``vmamba_small_e238_ema.pth`` converted with ``vmunet-monai convert-weights``);
            ``"vmunet"``: a whole VM-UNet checkpoint (strict).

    Returns:
        ``network`` (for use in config expressions).
    """
    if not path:
        return network
    import logging

    from vmunet_monai.weights import load_vmamba_pretrained, load_vmunet_checkpoint

    require_file(path, hint="check --pretrained_weights")
    if kind == "vmamba":
        report = load_vmamba_pretrained(network, path)
    elif kind == "vmunet":
        report = load_vmunet_checkpoint(network, path)
    else:
        raise ValueError(f"pretrained kind must be 'vmamba' or 'vmunet', got {kind!r}")
    summary = report.summary() if hasattr(report, "summary") else str(report)
    logging.getLogger(__name__).info(f"pretrained weights {path}: {summary}")
    return network

"""``vmunet-monai train | evaluate | infer``: thin wrappers that run the MONAI bundle configs.

Each command merges the task's config files (:data:`TASK_CONFIGS`) and runs them with
``monai.bundle.run``; every keyword argument becomes a config override (``--epochs 5``,
``--dataset_dir /data/isic2017``, ``--network_def#dims "[48,96,192,384]"``...), exactly as with
``python -m monai.bundle run``. The bundle directory is ``bundle/`` next to the package (a repository
checkout) or ``--bundle_root``.

Examples::

    vmunet-monai train                                     # embedded ISIC sample, CPU demo recipe
    vmunet-monai train --dataset_dir /data/isic2017_prepared --amp True
    vmunet-monai evaluate --dataset_dir /data/isic2017_prepared
    vmunet-monai infer --input_dir my_photos/ --output_dir masks/
    vmunet-monai train --task synapse --dataset_dir /data/Synapse
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["TASK_CONFIGS", "TASK_METADATA", "find_bundle_root", "config_files", "run_bundle", "train", "evaluate", "infer"]

#: task -> command -> config files (relative to ``<bundle_root>/configs``), merged in order
TASK_CONFIGS: dict[str, dict[str, list[str]]] = {
    "isic": {
        "train": ["train.json"],
        "evaluate": ["train.json", "evaluate.json"],
        "infer": ["inference.json"],
        "multi_gpu_train": ["train.json", "multi_gpu_train.json"],
        "multi_gpu_evaluate": ["train.json", "evaluate.json", "multi_gpu_evaluate.json"],
    },
    "synapse": {
        "train": ["synapse_train.json"],
        "evaluate": ["synapse_train.json", "synapse_evaluate.json"],
        "infer": ["synapse_inference.json"],
        "multi_gpu_train": ["synapse_train.json", "synapse_multi_gpu_train.json"],
    },
}


#: task -> metadata file (relative to ``<bundle_root>/configs``)
TASK_METADATA: dict[str, str] = {"isic": "metadata.json", "synapse": "synapse_metadata.json"}


def find_bundle_root(bundle_root: str | None = None) -> Path:
    """The bundle folder: ``bundle_root`` if given, else ``bundle/`` beside the installed package."""
    if bundle_root is not None:
        root = Path(bundle_root).expanduser().resolve()
    else:
        root = Path(__file__).resolve().parents[2] / "bundle"
    if not (root / "configs").is_dir():
        raise FileNotFoundError(
            f"{root}: no MONAI bundle here (expected a 'configs' folder); pass --bundle_root <path to the bundle>"
        )
    return root


def config_files(task: str, command: str, bundle_root: Path) -> list[str]:
    """Absolute config paths of ``task``/``command``; clear errors for unknown tasks or missing files."""
    if task not in TASK_CONFIGS:
        raise ValueError(f"unknown task {task!r}; choose one of {sorted(TASK_CONFIGS)}")
    if command not in TASK_CONFIGS[task]:
        raise ValueError(f"task {task!r} has no {command!r} configs (has {sorted(TASK_CONFIGS[task])})")
    files = [bundle_root / "configs" / name for name in TASK_CONFIGS[task][command]]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"missing bundle config file(s): {', '.join(missing)}")
    return [str(f) for f in files]


def run_bundle(task: str, command: str, bundle_root: str | None = None, **overrides: Any) -> None:
    """Run ``task``/``command`` configs through ``monai.bundle.run`` with ``overrides`` (config ids)."""
    from monai.bundle import run

    root = find_bundle_root(bundle_root)
    configs = config_files(task, command, root)
    overrides = {k.replace("::", "#"): v for k, v in overrides.items() if v is not None}
    for key in ("dataset_dir", "ckpt_dir", "output_dir"):  # relative paths are meant from the caller's folder
        if isinstance(overrides.get(key), str):
            overrides[key] = os.path.abspath(overrides[key])
    logging_file = root / "configs" / "logging.conf"
    try:
        run(
            run_id="run",
            config_file=configs,
            meta_file=str(root / "configs" / TASK_METADATA.get(task, "metadata.json")),
            logging_file=str(logging_file) if logging_file.is_file() else None,
            bundle_root=str(root),
            **overrides,
        )
    except Exception as err:
        user_error = _user_error(err)
        if user_error is None:
            raise
        # a data or path problem: one clear line naming the file, not a MONAI config-evaluation traceback
        sys.stderr.write(f"vmunet-monai {command}: error: {user_error}\n")
        raise SystemExit(1) from None


def _user_error(err: BaseException) -> BaseException | None:
    """The data/weights error at the root of a (chained) bundle exception, if any: those name the file at fault,
    so the user gets that one line instead of MONAI's config-parsing traceback."""
    from vmunet_monai.data.isic_io import ISICDataError
    from vmunet_monai.data.synapse import SynapseDataError
    from vmunet_monai.weights import WeightsError

    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, (ISICDataError, SynapseDataError, WeightsError, FileNotFoundError)):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def train(task: str = "isic", bundle_root: str | None = None, **overrides: Any) -> None:
    """Train (embedded sample by default; ``--dataset_dir`` for real data). Overrides are bundle config ids:
    ``--epochs``, ``--batch_size``, ``--image_size``, ``--device``, ``--amp``, ``--scan_backend``,
    ``--cuda_graph`` (on CUDA the step is replayed as a CUDA graph unless False), ``--resume``, ``--ckpt_dir``,
    ``--output_dir``, ``--num_workers``..."""
    run_bundle(task, "train", bundle_root, **overrides)


def evaluate(task: str = "isic", bundle_root: str | None = None, **overrides: Any) -> None:
    """Evaluate ``models/model.pt`` on the test split (``--eval_split validation`` for the validation split);
    writes metrics.json/csv, per_image_scores.csv and overlays/ under ``<output_dir>/evaluation``."""
    run_bundle(task, "evaluate", bundle_root, **overrides)


def infer(task: str = "isic", bundle_root: str | None = None, input_dir: str | None = None, **overrides: Any) -> None:
    """Segment every image of ``--input_dir`` (JPEG/PNG, any size); masks (0/255 PNG, original size) and
    overlays go to ``--output_dir``."""
    if input_dir is not None:
        overrides["dataset_dir"] = input_dir
    run_bundle(task, "infer", bundle_root, **overrides)

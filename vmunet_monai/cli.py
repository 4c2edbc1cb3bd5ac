"""``vmunet-monai`` command line (python-fire).

Each sub-command is a thin wrapper: the work lives in the package module named beside it, imported
lazily so that ``vmunet-monai --help`` stays fast and never needs CUDA.
"""

from __future__ import annotations

import importlib

# command name -> "module:function"
COMMANDS = {
    "train": "vmunet_monai.workflows.commands:train",
    "evaluate": "vmunet_monai.workflows.commands:evaluate",
    "infer": "vmunet_monai.workflows.commands:infer",
    "prepare_isic": "vmunet_monai.data.isic_prepare:prepare_isic",
    "prepare_synapse": "vmunet_monai.data.synapse_prepare:prepare_synapse",
    "stack_synapse": "vmunet_monai.data.synapse_prepare:stack_case",
    "convert_weights": "vmunet_monai.weights:convert_weights",
    "benchmark": "vmunet_monai.benchmark:benchmark",
    "export": "vmunet_monai.export:export",
    "monailabel_app": "vmunet_monai.monailabel_app:prepare_app",
}


def _lazy(target: str):
    module_name, func_name = target.split(":")

    def command(*args, **kwargs):
        return getattr(importlib.import_module(module_name), func_name)(*args, **kwargs)

    command.__name__ = func_name
    command.__doc__ = f"See {module_name}.{func_name} (run with --help after the command for its arguments)."
    return command


def main() -> None:
    import fire

    commands = {name: _lazy(target) for name, target in COMMANDS.items()}
    # fire accepts both `prepare-isic` and `prepare_isic`
    fire.Fire(commands, name="vmunet-monai")


if __name__ == "__main__":
    main()

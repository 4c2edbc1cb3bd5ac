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
    "synapse_spacing": "vmunet_monai.data.synapse_prepare:write_spacing_file",
    "convert_weights": "vmunet_monai.weights:convert_weights",
    "benchmark": "vmunet_monai.benchmark:benchmark",
    "export": "vmunet_monai.export:export",
    "monailabel_app": "vmunet_monai.monailabel_app:prepare_app",
}


def _load(target: str):
    module_name, func_name = target.split(":")
    return getattr(importlib.import_module(module_name), func_name)


def _lazy(target: str):
    """A stand-in listed by ``vmunet-monai --help``; the real function is imported only when it is called."""

    def command(*args, **kwargs):
        return _load(target)(*args, **kwargs)

    command.__name__ = target.split(":")[1]
    command.__doc__ = f"See {target.replace(':', '.')} (`vmunet-monai <command> --help` shows its arguments)."
    return command


def main(argv: list[str] | None = None) -> None:
    import sys

    import fire

    argv = list(sys.argv[1:] if argv is None else argv)
    name = argv[0].replace("-", "_") if argv and not argv[0].startswith("-") else None
    if name in COMMANDS:
        # hand fire the real function, so that `--help` and argument checking see its true signature
        fire.Fire({name: _load(COMMANDS[name])}, command=[name, *argv[1:]], name="vmunet-monai")
    else:
        fire.Fire({n: _lazy(t) for n, t in COMMANDS.items()}, command=argv, name="vmunet-monai")


if __name__ == "__main__":
    main()

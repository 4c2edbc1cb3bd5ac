"""Export VM-UNet for deployment outside Python: ONNX, ``torch.export`` (``.pt2``) and TorchScript.

All three formats are produced from the network with the ``export`` selective-scan backend
(:mod:`vmunet_monai.ops.export_scan`): the recurrence over time is one ``scan`` higher-order op, which
``torch.export`` keeps as a single node and the ONNX exporter turns into a single ONNX ``Scan`` node. The graph is
therefore small and computes exactly the maths of the training backends (parity is checked after export).

What is not possible, and why:

- ``mamba_ssm``'s CUDA kernel is a pybind call inside an ``autograd.Function``: ``torch.jit``, ``torch.export`` and
  ONNX cannot see inside it (state-spaces/mamba#79, #287). Export always switches the network to the ``export``
  backend; a checkpoint trained with ``mamba_ssm``/``triton``/``torch`` loads unchanged (the backends share weights).
- TorchScript: ``torch.jit.script`` cannot compile the network (and torch 2.13 deprecates ``torch.jit``). ``kind=
  "torchscript"`` uses ``torch.jit.trace`` with the ``reference`` backend, which unrolls the scan over every time
  step: the graph is fixed to one image size and grows with ``H*W`` (fine for small images, slow to build at
  256 x 256). Prefer ONNX or ``torch.export``.

Command line (``vmunet-monai export``)::

    vmunet-monai export --kind onnx --dst model.onnx --checkpoint bundle/models/model.pt --image_size 256
    vmunet-monai export --kind torch_export --dst model.pt2 --config_file bundle/configs/inference.json

Example::

    >>> from vmunet_monai.export import export
    >>> result = export("onnx", dst="tiny.onnx", image_size=64, dims=(8, 16, 32, 64), depths=(1, 1, 1, 1),
    ...                 depths_decoder=(1, 1, 1, 1), d_state=4)  # doctest: +SKIP
    >>> result["max_abs_diff"] < 1e-4  # doctest: +SKIP
    True
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vmunet_monai.networks.nets import VMUNet

__all__ = [
    "EXPORT_KINDS",
    "build_network",
    "load_weights",
    "export",
    "export_onnx",
    "export_torch_export",
    "export_torchscript",
    "run_onnx",
    "predict_mask",
    "onnx_scan_nodes",
]

logger = logging.getLogger("vmunet_monai")

EXPORT_KINDS = ("onnx", "torch_export", "torchscript")
_DEFAULT_SUFFIX = {"onnx": ".onnx", "torch_export": ".pt2", "torchscript": ".ts"}


def build_network(
    config_file: str | os.PathLike | Sequence[str] | None = None,
    net_id: str = "network_def",
    in_channels: int = 3,
    out_channels: int = 1,
    dims: Sequence[int] = (96, 192, 384, 768),
    depths: Sequence[int] = (2, 2, 2, 2),
    depths_decoder: Sequence[int] = (2, 2, 2, 1),
    d_state: int = 16,
    scan_backend: str = "export",
) -> VMUNet:
    """The VM-UNet to export, from a bundle config (``config_file``/``net_id``) or from the size arguments.

    The network is put in eval mode with ``scan_backend`` (``"export"`` by default) on every SS2D layer.

    Args:
        config_file: a bundle config (e.g. ``bundle/configs/inference.json``) whose ``net_id`` is a VM-UNet;
            overrides the size arguments.
        net_id: the network's id in ``config_file``.
        in_channels, out_channels, dims, depths, depths_decoder, d_state: VM-UNet sizes (ignored with a config).
        scan_backend: selective-scan backend for the exported graph.

    Raises:
        TypeError: ``net_id`` in ``config_file`` is not a :class:`VMUNet`.
    """
    if config_file is not None:
        from monai.bundle import ConfigParser

        parser = ConfigParser()
        parser.read_config(config_file if isinstance(config_file, (list, tuple)) else str(config_file))
        net = parser.get_parsed_content(net_id)
        if not isinstance(net, VMUNet):
            raise TypeError(f"{net_id!r} in {config_file} is a {type(net).__name__}, not a VMUNet; cannot export it.")
    else:
        net = VMUNet(
            spatial_dims=2,
            in_channels=in_channels,
            out_channels=out_channels,
            dims=tuple(dims),
            depths=tuple(depths),
            depths_decoder=tuple(depths_decoder),
            d_state=d_state,
            drop_path_rate=0.0,
        )
    net.set_scan_backend(scan_backend)
    return net.eval()


def load_weights(net: torch.nn.Module, checkpoint: str | os.PathLike, key: str | None = None) -> torch.nn.Module:
    """Load a state dict (plain, or nested under ``key``/``"model"``/``"state_dict"``) with ``weights_only=True``.

    Raises:
        FileNotFoundError: ``checkpoint`` does not exist.
        ValueError: the file is not a tensor dictionary, or its keys/shapes do not fit ``net`` (message names the
            file and the first differing keys).
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"cannot read checkpoint {path} with torch.load(weights_only=True): {err}") from None
    for candidate in ([key] if key else []) + ["model", "state_dict"]:
        if isinstance(state, Mapping) and isinstance(state.get(candidate), Mapping):
            state = state[candidate]
            break
    if not isinstance(state, Mapping) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"checkpoint {path} is not a state dict of tensors (got {type(state).__name__}).")
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[:4]
        raise ValueError(f"checkpoint {path} does not fit the network: {' '.join(first)}") from None
    return net


def _example_input(net: VMUNet, image_size: int | Sequence[int], batch: int, seed: int = 0) -> torch.Tensor:
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if any(s % 32 for s in size):
        raise ValueError(f"image_size must be a multiple of 32 in each dimension, got {size}.")
    gen = torch.Generator().manual_seed(seed)
    return torch.rand((batch, _input_channels(net)) + size, generator=gen)


def _input_channels(net: VMUNet) -> int:
    """The channel count ``net`` accepts (1 for a grey network that repeats its input to RGB)."""
    return int(getattr(net, "in_channels", net.patch_embed.proj.in_channels))


def onnx_scan_nodes(path: str | os.PathLike) -> dict[str, int]:
    """Node counts of an ONNX file: ``{"nodes": top-level nodes, "scan": Scan nodes, "loop": Loop nodes}``."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    ops = [n.op_type for n in model.graph.node]
    return {"nodes": len(ops), "scan": ops.count("Scan"), "loop": ops.count("Loop")}


def run_onnx(path: str | os.PathLike, x: torch.Tensor | np.ndarray) -> np.ndarray:
    """Run an exported ONNX file in onnxruntime (CPU) on ``x`` and return the first output."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    array = x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)
    return session.run(None, {session.get_inputs()[0].name: array.astype(np.float32)})[0]


def predict_mask(logits: torch.Tensor | np.ndarray) -> np.ndarray:
    """Logits ``(B, C, H, W)`` -> label mask ``(B, H, W)`` uint8: sigmoid > 0.5 for one channel, else argmax."""
    logits = torch.as_tensor(np.asarray(logits)) if not torch.is_tensor(logits) else logits.detach().cpu()
    if logits.shape[1] == 1:
        return (logits[:, 0] > 0).numpy().astype(np.uint8)  # sigmoid(x) > 0.5  <=>  x > 0
    return logits.argmax(dim=1).numpy().astype(np.uint8)


def export_onnx(net: VMUNet, x: torch.Tensor, dst: str | os.PathLike, opset: int = 18, dynamic_batch: bool = False) -> Path:
    """``torch.onnx.export(dynamo=True)`` of ``net`` at ``x``'s shape; the scan becomes one ONNX ``Scan`` node.

    Args:
        opset: ONNX opset, 18 or newer. (The dynamo exporter writes opset 18 natively; its down-conversion to 17
            writes ``Split(num_outputs=...)``, which opset 17 does not have, and onnxruntime rejects that graph.)
        dynamic_batch: export with a symbolic batch dimension (spatial size stays fixed).
    """
    if opset < 18:
        raise ValueError(
            f"opset must be 18 or newer, got {opset}: torch's ONNX exporter writes opset 18 and its conversion "
            f"to older opsets produces graphs onnxruntime rejects."
        )
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=64)},) if dynamic_batch else None
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            net,
            (x,),
            dynamo=True,
            opset_version=opset,
            input_names=["image"],
            output_names=["pred"],
            dynamic_shapes=dynamic_shapes,
            external_data=False,
            verbose=False,
        )
    program.save(str(dst))
    return dst


def export_torch_export(net: VMUNet, x: torch.Tensor, dst: str | os.PathLike) -> Path:
    """``torch.export.export`` of ``net`` at ``x``'s shape, saved with ``torch.export.save`` (load with ``torch.export.load``)."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        program = torch.export.export(net, (x,))
    torch.export.save(program, str(dst))
    return dst


def export_torchscript(net: VMUNet, x: torch.Tensor, dst: str | os.PathLike) -> Path:
    """``torch.jit.trace`` with the ``reference`` scan (unrolled over time; fixed image size). See the module notes."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    backend = net.scan_backend
    net.set_scan_backend("reference")
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit deprecation and tracer warnings
            traced = torch.jit.trace(net, (x,), check_trace=False)
            torch.jit.save(traced, str(dst))
    finally:
        net.set_scan_backend(backend)
    return dst


def _load_exported(kind: str, path: Path):
    """A callable ``f(x) -> logits`` for an exported file (onnxruntime for ONNX)."""
    if kind == "onnx":
        return lambda x: torch.from_numpy(run_onnx(path, x))
    if kind == "torch_export":
        module = torch.export.load(str(path)).module()
        return lambda x: module(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(path))
    return lambda x: module(x)


def export(
    kind: str = "onnx",
    dst: str | os.PathLike | None = None,
    checkpoint: str | os.PathLike | None = None,
    image_size: int | Sequence[int] = 256,
    in_channels: int = 3,
    out_channels: int = 1,
    opset: int = 18,
    dims: Sequence[int] = (96, 192, 384, 768),
    depths: Sequence[int] = (2, 2, 2, 2),
    depths_decoder: Sequence[int] = (2, 2, 2, 1),
    d_state: int = 16,
    config_file: str | os.PathLike | None = None,
    net_id: str = "network_def",
    batch: int = 1,
    dynamic_batch: bool = False,
    check: bool = True,
    check_input: str | os.PathLike | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Export VM-UNet (``kind`` = ``"onnx"``, ``"torch_export"`` or ``"torchscript"``) and check it against PyTorch.

    Args:
        kind: output format.
        dst: output file; default ``vmunet.onnx`` / ``vmunet.pt2`` / ``vmunet.ts`` in the current folder.
        checkpoint: optional state dict (``models/model.pt``) loaded with ``weights_only=True``; random weights
            otherwise (fine for checking the graph, not for use).
        image_size: ``H`` (square) or ``(H, W)``, multiples of 32; the exported graph is fixed to it.
        in_channels, out_channels, dims, depths, depths_decoder, d_state: VM-UNet sizes (paper defaults).
        opset: ONNX opset (>= 18).
        config_file: build the network from a bundle config instead (e.g. ``bundle/configs/inference.json``).
        net_id: the network's id in ``config_file``.
        batch: batch size of the example input.
        dynamic_batch: ONNX only: symbolic batch dimension.
        check: run the exported model on the example input and compare with the PyTorch network.
        check_input: optional RGB/grey image file used for the check instead of random input (min-max scaled
            to [0, 255] and resized to ``image_size`` like the ISIC pipeline).
        seed: seed of the random example input.

    Returns:
        ``{"kind", "path", "seconds", "max_abs_diff", "mask_equal_fraction", "shape", ...}``; ONNX adds the node
        counts of :func:`onnx_scan_nodes`.

    Raises:
        ValueError: unknown ``kind``, bad ``image_size`` or ``opset``, a checkpoint that does not fit.
    """
    if kind not in EXPORT_KINDS:
        raise ValueError(f"kind must be one of {EXPORT_KINDS}, got {kind!r}.")
    net = build_network(config_file, net_id, in_channels, out_channels, dims, depths, depths_decoder, d_state)
    if checkpoint is not None:
        load_weights(net, checkpoint)
    x = _example_input(net, image_size, batch, seed) if check_input is None else _image_input(check_input, image_size, net)
    dst = Path(dst) if dst is not None else Path("vmunet" + _DEFAULT_SUFFIX[kind])
    start = time.perf_counter()
    if kind == "onnx":
        export_onnx(net, x, dst, opset=opset, dynamic_batch=dynamic_batch)
    elif kind == "torch_export":
        export_torch_export(net, x, dst)
    else:
        export_torchscript(net, x, dst)
    result: dict[str, Any] = {
        "kind": kind,
        "path": str(dst),
        "seconds": round(time.perf_counter() - start, 2),
        "shape": list(x.shape),
        "size_bytes": dst.stat().st_size,
    }
    if kind == "onnx":
        result.update(onnx_scan_nodes(dst))
    if check:
        with torch.no_grad():
            expected = net(x)
            got = _load_exported(kind, dst)(x)
        result["max_abs_diff"] = float((expected - got).abs().max())
        result["mask_equal_fraction"] = float((predict_mask(expected) == predict_mask(got)).mean())
    logger.info("exported %s", result)
    return result


def _image_input(path: str | os.PathLike, image_size: int | Sequence[int], net: VMUNet) -> torch.Tensor:
    """A real image as a ``(1, C, H, W)`` network input through the package's ISIC evaluation transforms."""
    from vmunet_monai.transforms.isic import isic_eval_transforms

    size = image_size if isinstance(image_size, int) else tuple(image_size)
    item = isic_eval_transforms(size, with_label=False)({"image": str(path)})
    image = torch.as_tensor(item["image"]).float()[None]
    if _input_channels(net) == 1:
        image = image.mean(dim=1, keepdim=True)
    return image

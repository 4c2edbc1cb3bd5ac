"""CUDA-graph replay of a network's inference forward.

A VM-UNet forward launches several hundred small kernels (15 SS2D layers of projections, norms, a depthwise
conv and the scan, plus the patch layers). At batch 1 the GPU finishes each kernel faster than Python can
launch the next one, so latency is set by launch overhead, not by the GPU. Capturing the forward once as a
CUDA graph and replaying it launches the whole forward as one unit.

A graph is captured per (shape, dtype, device, autocast) of the input, on its first use, after a few warm-up
calls (they also trigger any Triton compilation, which cannot happen during a capture). Replays read the
input from a static buffer and return a copy of the static output, so results never alias the graph's
memory. Weights are read in place: ``load_state_dict`` after capture is seen by later replays.

Under autocast, eager PyTorch casts every weight of a Linear or convolution to the autocast dtype at each use, one
small kernel per weight (about 100 per VM-UNet forward). A captured forward instead starts with one multi-tensor
copy of those weights into 16-bit buffers and runs on the buffers: the values are the ones autocast would make,
so the output is bit-for-bit the same, with ~100 fewer kernels per replay.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch.func import functional_call

__all__ = ["CUDAGraphModule", "autocast_cast_parameters"]

# modules whose weights autocast casts to its dtype at every use (lower-precision ops on CUDA)
_AUTOCAST_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                     nn.ConvTranspose3d)


def autocast_cast_parameters(network: nn.Module) -> dict[str, nn.Parameter]:
    """The float32 parameters that a forward under CUDA autocast only uses in the autocast dtype: the weights and
    biases of ``nn.Linear`` / ``nn.Conv*`` modules (exact types: a subclass may use its weight otherwise) and those
    a module names in its ``autocast_cast_parameters`` attribute (e.g. ``SS2D``'s projection weights)."""
    found: dict[str, nn.Parameter] = {}
    for prefix, module in network.named_modules():
        names = ["weight", "bias"] if type(module) in _AUTOCAST_MODULES else []
        names += list(getattr(module, "autocast_cast_parameters", ()))
        for name in names:
            param = module._parameters.get(name)
            if param is not None and param.dtype == torch.float32:
                found[f"{prefix}.{name}" if prefix else name] = param
    return found


class _Captured:
    """One captured forward: its graph, the static input and output tensors and any other buffers it uses."""

    def __init__(self, graph: torch.cuda.CUDAGraph, static_input: torch.Tensor, static_output: torch.Tensor,
                 buffers: list[torch.Tensor]) -> None:
        self.graph = graph
        self.buffers = buffers  # tensors the graph reads or writes besides its pool (the 16-bit weight copies)
        self.static_input = static_input
        self.static_output = static_output


class CUDAGraphModule(nn.Module):
    """Wrap ``network`` so that its inference forward on CUDA runs as a replayed CUDA graph.

    The graph is used only where replay is exact and safe: a CUDA tensor input with gradients disabled
    (``torch.no_grad`` or ``torch.inference_mode``) and the wrapped network in eval mode. Any other call
    (CPU input, training, gradients enabled) runs the network's ordinary forward, so the wrapper can stay in
    place in code that also trains or runs on CPU.

    Args:
        network: the network; it must return one tensor.
        warmup: ordinary forwards on a side stream before each capture.
        max_graphs: captured input signatures kept (the oldest is dropped beyond this), which bounds the
            memory the graphs hold.
        precast_weights: under autocast, cast the weights autocast would cast (:func:`autocast_cast_parameters`)
            once per replay in one multi-tensor copy; the output is identical. False = autocast's own casts.

    Example::

        >>> from vmunet_monai.networks.nets import VMUNet
        >>> net = CUDAGraphModule(VMUNet(scan_backend="triton").cuda().eval())  # doctest: +SKIP
        >>> with torch.inference_mode():  # doctest: +SKIP
        ...     logits = net(torch.randn(1, 3, 256, 256, device="cuda"))  # captured at the first call
    """

    def __init__(self, network: nn.Module, warmup: int = 3, max_graphs: int = 4, precast_weights: bool = True) -> None:
        super().__init__()
        if warmup < 1:
            raise ValueError(f"warmup must be >= 1 (the first call may compile kernels), got {warmup}.")
        self.network = network
        self.warmup = int(warmup)
        self.max_graphs = int(max_graphs)
        self.precast_weights = bool(precast_weights)
        self._graphs: dict[tuple, _Captured] = {}
        self._pool: Any = None

    @property
    def num_graphs(self) -> int:
        """How many input signatures have a captured graph."""
        return len(self._graphs)

    def reset(self) -> None:
        """Drop every captured graph (for instance after replacing parameter tensors, not just their values)."""
        self._graphs.clear()
        self._pool = None

    def _uses_graph(self, x: Any) -> bool:
        return (
            isinstance(x, torch.Tensor)
            and x.is_cuda
            and not torch.is_grad_enabled()
            and not self.network.training
        )

    @staticmethod
    def _signature(x: torch.Tensor) -> tuple:
        autocast = torch.is_autocast_enabled("cuda")
        return (
            tuple(x.shape),
            x.dtype,
            x.device,
            autocast,
            torch.get_autocast_dtype("cuda") if autocast else None,
            torch.is_inference_mode_enabled(),
        )

    def _forward_fn(self, device_type: str = "cuda") -> tuple[Any, list[torch.Tensor]]:
        """The forward to capture and the buffers it needs kept alive: the network itself, or under autocast with
        ``precast_weights`` the network run on 16-bit copies of its autocast-cast weights, refreshed by one
        ``_foreach_copy_`` at the start of each call (so ``load_state_dict`` after capture is still seen)."""
        if not (self.precast_weights and torch.is_autocast_enabled(device_type)):
            return self.network, []
        dtype = torch.get_autocast_dtype(device_type)
        params = autocast_cast_parameters(self.network)
        if not params:
            return self.network, []
        names, sources = list(params), list(params.values())
        copies = [torch.empty_like(p, dtype=dtype) for p in sources]

        def forward(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                torch._foreach_copy_(copies, sources)
            return functional_call(self.network, dict(zip(names, copies)), (x,), strict=False)

        return forward, copies

    def _capture(self, x: torch.Tensor) -> _Captured:
        static_input = x.clone()
        forward, buffers = self._forward_fn()
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                forward(static_input)
        torch.cuda.current_stream(x.device).wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            static_output = forward(static_input)
        if not isinstance(static_output, torch.Tensor):
            raise TypeError(f"CUDAGraphModule needs a network returning one tensor, got {type(static_output).__name__}.")
        return _Captured(graph, static_input, static_output, buffers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._uses_graph(x):
            return self.network(x)
        if hasattr(x, "as_tensor"):  # MetaTensor: the graph holds a plain tensor buffer
            x = x.as_tensor()
        key = self._signature(x)
        captured = self._graphs.get(key)
        if captured is None:
            if len(self._graphs) >= self.max_graphs:
                self._graphs.pop(next(iter(self._graphs)))
            captured = self._graphs[key] = self._capture(x)
        captured.static_input.copy_(x)
        captured.graph.replay()
        return captured.static_output.clone()

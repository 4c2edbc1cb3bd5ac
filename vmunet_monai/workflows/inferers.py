"""Inferers used by the bundles."""

from __future__ import annotations

from typing import Any

import torch
from monai.data import MetaTensor
from monai.inferers import SimpleInferer

__all__ = ["PlainTensorInferer", "CUDAGraphInferer"]


class PlainTensorInferer(SimpleInferer):
    """``SimpleInferer`` that hands the network a plain ``torch.Tensor`` instead of a ``MetaTensor``.

    The metadata is not needed inside the network, and ``MetaTensor.__torch_function__`` runs on every
    one of the many small operations of the selective scan, which costs time. Post-processing
    (``Invertd``) takes the spatial history from the input image, not from the prediction, so nothing
    is lost.

    Example:
        >>> inferer = PlainTensorInferer()
        >>> out = inferer(MetaTensor(torch.ones(1, 3, 8, 8)), torch.nn.Identity())
        >>> type(out).__name__
        'Tensor'
    """

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(inputs, MetaTensor):
            inputs = inputs.as_tensor()
        return network(inputs, *args, **kwargs)


class CUDAGraphInferer(PlainTensorInferer):
    """``PlainTensorInferer`` that replays the network's forward as a CUDA graph on CUDA inputs.

    It wraps the network in :class:`vmunet_monai.networks.CUDAGraphModule` on first use (one graph per input
    shape, captured at its first batch). Batch-1 latency is dominated by kernel launches, which the replay
    removes. On CPU, or with gradients enabled, it is exactly ``PlainTensorInferer``.

    Args:
        warmup: ordinary forwards before each capture.
        max_graphs: captured input shapes kept.

    Example:
        >>> inferer = CUDAGraphInferer()
        >>> inferer(torch.ones(1, 3, 8, 8), torch.nn.Identity()).shape  # CPU: an ordinary forward
        torch.Size([1, 3, 8, 8])
    """

    def __init__(self, warmup: int = 3, max_graphs: int = 4) -> None:
        super().__init__()
        self.warmup = warmup
        self.max_graphs = max_graphs
        self._wrapped = None

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> Any:
        from vmunet_monai.networks.cuda_graph import CUDAGraphModule

        if args or kwargs:  # extra forward arguments cannot be baked into a graph
            return super().__call__(inputs, network, *args, **kwargs)
        if self._wrapped is None or self._wrapped.network is not network:
            self._wrapped = CUDAGraphModule(network, warmup=self.warmup, max_graphs=self.max_graphs)
        return super().__call__(inputs, self._wrapped)

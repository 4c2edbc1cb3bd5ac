"""Inferers used by the bundles."""

from __future__ import annotations

from typing import Any

import torch
from monai.data import MetaTensor
from monai.inferers import SimpleInferer

__all__ = ["PlainTensorInferer"]


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

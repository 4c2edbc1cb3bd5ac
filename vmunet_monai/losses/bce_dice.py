"""BCE + Dice loss of the published VM-UNet ISIC recipe, on logits."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["BceDiceLoss"]


class BceDiceLoss(nn.Module):
    """``wb * BCE + wd * (1 - mean_b dice_b)`` for binary segmentation (published ``BceDiceLoss(wb=1, wd=1)``).

    The published loss applies ``nn.BCELoss`` to sigmoid probabilities; here the network returns logits
    and the BCE is ``binary_cross_entropy_with_logits`` (the same value, numerically stable, AMP safe).
    The Dice term is computed **per sample** on the sigmoid probabilities with smoothing 1, exactly as
    published: ``dice_b = (2 * sum(p * t) + smooth) / (sum(p) + sum(t) + smooth)``. Targets may be soft
    (the published bilinear-resized masks are). The loss is computed in float32 even under autocast.

    Args:
        wb: weight of the BCE term (published 1).
        wd: weight of the Dice term (published 1).
        smooth: Dice smoothing (published 1).
        sigmoid: apply a sigmoid to the input (``False`` if the network already outputs probabilities).

    Example:
        >>> loss = BceDiceLoss()
        >>> logits, target = torch.zeros(2, 1, 4, 4), torch.ones(2, 1, 4, 4)
        >>> round(loss(logits, target).item(), 4)  # BCE log(2) + Dice 1 - (2*8+1)/(8+16+1)
        1.0131
    """

    def __init__(self, wb: float = 1.0, wd: float = 1.0, smooth: float = 1.0, sigmoid: bool = True) -> None:
        super().__init__()
        self.wb, self.wd, self.smooth, self.sigmoid = wb, wd, smooth, sigmoid

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if input.shape != target.shape:
            raise ValueError(f"BceDiceLoss: input shape {tuple(input.shape)} != target shape {tuple(target.shape)}")
        batch = input.shape[0]
        input = input.float().reshape(batch, -1)
        target = target.float().reshape(batch, -1)
        if self.sigmoid:
            bce = F.binary_cross_entropy_with_logits(input, target)
            prob = torch.sigmoid(input)
        else:
            prob = input
            bce = F.binary_cross_entropy(prob, target)
        intersection = (prob * target).sum(1)
        dice = (2 * intersection + self.smooth) / (prob.sum(1) + target.sum(1) + self.smooth)
        return self.wb * bce + self.wd * (1 - dice.mean())

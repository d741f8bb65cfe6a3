"""Losses (LOSSES)."""
from __future__ import annotations

import torch

from ..base import BaseObject
from ..diffusion.losses import LOSS_TYPES, elementwise_loss
from ..registry import LOSSES


@LOSSES.register_class()
class ReconstructLoss(BaseObject):
    """Elementwise reconstruction loss `loss(pred, target)`, unreduced (same shape as pred).
    Pass it as `loss_fn` to GaussianDiffusion.loss to replace the diffusion's LOSS_TYPE."""

    para_dict = {
        'LOSS_TYPE': {'value': 'l2', 'choices': LOSS_TYPES, 'description': 'l2 (squared error), l1 or huber.'},
        'HUBER_DELTA': {'value': 1.0, 'description': 'Where the huber loss turns from quadratic to linear.'},
    }

    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return elementwise_loss(pred, target, self.cfg.LOSS_TYPE, self.cfg.HUBER_DELTA)

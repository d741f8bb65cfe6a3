"""Loss pieces shared by GaussianDiffusion and the LOSSES registry: the elementwise
reconstruction loss and Min-SNR weights."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ConfigError

LOSS_TYPES = ('l2', 'l1', 'huber')


def elementwise_loss(pred: torch.Tensor, target: torch.Tensor, loss_type: str = 'l2',
                     huber_delta: float = 1.0) -> torch.Tensor:
    """Unreduced loss between prediction and target, computed in float32 or wider."""
    pred, target = pred.float(), target.float()
    if loss_type == 'l2':
        return (pred - target) ** 2
    if loss_type == 'l1':
        return (pred - target).abs()
    if loss_type == 'huber':
        return F.huber_loss(pred, target, reduction='none', delta=huber_delta)
    raise ConfigError(f"LOSS_TYPE: '{loss_type}' is not one of {', '.join(LOSS_TYPES)}")


def min_snr_weight(snr: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023): min(snr, gamma) expressed for the
    network's target: / snr for eps, / (snr + 1) for v, unchanged for x0. A zero-SNR
    step (eps target) gets weight 1."""
    clipped = torch.clamp(snr, max=gamma)
    if prediction_type == 'eps':
        return torch.where(snr > 0, clipped / snr.clamp(min=torch.finfo(snr.dtype).tiny), torch.ones_like(snr))
    if prediction_type == 'v':
        return clipped / (snr + 1)
    return clipped

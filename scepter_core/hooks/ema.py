"""ModelEmaHook: exponential moving average of the trained weights."""
from __future__ import annotations

import torch

from ..registry import HOOKS
from .base import PRIORITY, BaseHook, TrainLoop


@HOOKS.register_class()
class ModelEmaHook(BaseHook):
    """After each optimizer step: ema = decay * ema + (1 - decay) * weights.

    Uses the model's own `model_ema` (LatentDiffusion with USE_EMA, saved as `model_ema.*`;
    with a TUNER it is the tuned UNet, so the adapters are averaged: tuners.sync_ema_copy)
    when present; otherwise keeps a shadow of every trainable parameter in its state."""

    default_priority = PRIORITY['EMA']
    para_dict = {
        'DECAY': {'value': 0.9999, 'description': 'EMA decay per step.'},
        'START_STEP': {'value': 0, 'description': 'Copy the weights (no averaging) until this step.'},
        'INTERVAL': {'value': 1, 'description': 'Update every N steps.'},
    }

    def __init__(self, cfg=None, logger=None):
        super().__init__(cfg, logger)
        self.shadow: dict[str, torch.Tensor] = {}

    def _pairs(self, solver: TrainLoop) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        model = solver.unwrapped_model
        ema_module = getattr(model, 'model_ema', None)
        if ema_module is not None:
            src = dict(model.model.named_parameters())
            names = [n for n, p in src.items() if p.requires_grad]
            ema = dict(ema_module.named_parameters())
            return [ema[n] for n in names], [src[n].detach() for n in names]
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        if not self.shadow:
            self.shadow = {n: p.detach().clone() for n, p in params.items()}
        return [self.shadow[n] for n in params], [p.detach() for p in params.values()]

    def before_all_iter(self, solver: TrainLoop) -> None:
        self._pairs(solver)  # allocate the shadow before a resume fills it

    @torch.no_grad()
    def after_iter(self, solver: TrainLoop) -> None:
        step = solver.state.step
        if not solver.state.is_step_end or step % self.cfg.INTERVAL:
            return
        ema, src = self._pairs(solver)
        weight = 1.0 if step <= self.cfg.START_STEP else 1.0 - self.cfg.DECAY
        torch._foreach_lerp_(ema, src, weight)

    def state_dict(self) -> dict:
        return {'shadow': self.shadow}

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.get('shadow', {}).items():
            if k in self.shadow:
                self.shadow[k].copy_(v)
            else:
                self.shadow[k] = v.clone()

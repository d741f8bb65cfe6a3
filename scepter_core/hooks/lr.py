"""LrHook: records the learning rate and applies a linear warmup when no LR_SCHEDULER does."""
from __future__ import annotations

from ..registry import HOOKS
from .base import PRIORITY, BaseHook, TrainLoop


@HOOKS.register_class()
class LrHook(BaseHook):
    """Linear warmup from WARMUP_START_LR to each group's base LR over WARMUP_STEPS."""

    default_priority = PRIORITY['LR']
    para_dict = {
        'WARMUP_STEPS': {'value': 0, 'description': 'Warmup length in optimizer steps (ignored with an LR_SCHEDULER).'},
        'WARMUP_START_LR': {'value': 0.0, 'description': 'LR at the first warmup step.'},
    }

    def before_all_iter(self, solver: TrainLoop) -> None:
        self.base = [g.get('initial_lr', g['lr']) for g in solver.optimizer.param_groups]
        self.active = bool(self.cfg.WARMUP_STEPS) and solver.lr_scheduler is None
        if self.cfg.WARMUP_STEPS and not self.active:
            self.logger.warning('LrHook: WARMUP_STEPS ignored, the LR_SCHEDULER owns the learning rate')

    def before_iter(self, solver: TrainLoop) -> None:
        step = solver.state.step
        if not self.active or step > self.cfg.WARMUP_STEPS:
            return
        frac = min((step + 1) / self.cfg.WARMUP_STEPS, 1.0)
        for g, base in zip(solver.optimizer.param_groups, self.base):
            g['lr'] = self.cfg.WARMUP_START_LR + (base - self.cfg.WARMUP_START_LR) * frac

    def after_iter(self, solver: TrainLoop) -> None:
        if solver.state.is_step_end:
            solver.state.log_values['lr'] = solver.optimizer.param_groups[0]['lr']

"""BackwardHook: backward pass, gradient accumulation, clipping, optimizer and LR steps,
and the guard against non-finite losses."""
from __future__ import annotations

import torch

from ..errors import ScepterError
from ..registry import HOOKS
from .base import PRIORITY, BaseHook


@HOOKS.register_class()
class BackwardHook(BaseHook):
    """Backward every micro-batch; clip, step and zero the gradients at each step end."""

    default_priority = PRIORITY['BACKWARD']
    para_dict = {
        'GRADIENT_CLIP': {'value': None, 'type': float, 'description': 'Clip the global grad norm to this value.'},
        'MAX_NONFINITE_STEPS': {'value': 5, 'description': 'Stop after this many non-finite losses in a row.'},
    }

    def __init__(self, cfg=None, logger=None):
        super().__init__(cfg, logger)
        self.bad_in_row = 0
        self.skipped_total = 0
        self._bad_step = False

    def after_iter(self, solver) -> None:
        loss = solver.iter_outputs['loss']
        if not torch.isfinite(loss.detach()).all():
            self._bad_step = True
        else:
            scaled = loss / solver.accu_step
            (solver.scaler.scale(scaled) if solver.scaler else scaled).backward()
        if not solver.is_step_end:
            return
        if self._bad_step:
            self._skip(solver, loss)
            return
        self.bad_in_row = solver.nonfinite_in_row = 0
        if solver.scaler:
            solver.scaler.unscale_(solver.optimizer)
        if self.cfg.GRADIENT_CLIP:
            norm = torch.nn.utils.clip_grad_norm_(solver.trainable_parameters(), self.cfg.GRADIENT_CLIP)
            solver.log_values['grad_norm'] = float(norm)
        if solver.scaler:
            solver.scaler.step(solver.optimizer)
            solver.scaler.update()
        else:
            solver.optimizer.step()
        solver.optimizer.zero_grad(set_to_none=True)
        if solver.lr_scheduler is not None:
            solver.lr_scheduler.step()

    def _skip(self, solver, loss: torch.Tensor) -> None:
        self._bad_step = False
        solver.optimizer.zero_grad(set_to_none=True)
        self.bad_in_row += 1
        self.skipped_total += 1
        solver.nonfinite_in_row = self.bad_in_row
        solver.log_values['skipped_steps'] = self.skipped_total
        self.logger.warning(f'step {solver.step}: loss is {float(loss.detach().float().mean())}; '
                            f'step skipped ({self.bad_in_row} in a row, {self.skipped_total} in all)')
        if self.bad_in_row >= self.cfg.MAX_NONFINITE_STEPS:
            last = solver.last_checkpoint or 'none written yet'
            raise ScepterError(f'training stopped at step {solver.step}: {self.bad_in_row} non-finite losses in '
                               f'a row (lower the learning rate or check the data); last good checkpoint: {last}')

    def state_dict(self) -> dict:
        return {'skipped_total': self.skipped_total}

    def load_state_dict(self, state: dict) -> None:
        self.skipped_total = int(state.get('skipped_total', 0))

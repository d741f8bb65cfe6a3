"""TrainStep: one micro-batch of training, top to bottom (mmengine's
`optim_wrapper.update_params` is the model). The solver owns one; its settings come from
the recipe's BackwardHook block when there is one, else from that hook's defaults."""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from ..config import Config
from ..dist import mean_over_ranks
from ..env import we
from ..errors import ConfigError, ScepterError
from ..hooks.backward import BackwardHook
from ..hooks.base import LoopState


@dataclass(frozen=True)
class StepSettings:
    accu_step: int = 1                  # micro-batches per optimizer step
    gradient_clip: float | None = None  # max global grad norm; None: no clipping
    max_nonfinite_steps: int = 5        # stop after this many skipped steps in a row
    empty_cache_step: int = -1          # torch.cuda.empty_cache() every N steps

    @classmethod
    def from_config(cls, solver_cfg: Config, hooks: Sequence[Any]) -> StepSettings:
        """SOLVER.ACCU_STEP and the BackwardHook block of TRAIN_HOOKS (its defaults without one)."""
        hook = next((h for h in hooks if isinstance(h, BackwardHook)), None) or BackwardHook()
        c = hook.cfg
        accu, hook_accu = int(solver_cfg.ACCU_STEP), int(c.ACCUMULATE_STEP)
        for key, value in (('SOLVER.ACCU_STEP', accu), ("BackwardHook's ACCUMULATE_STEP", hook_accu)):
            if value < 1:
                raise ConfigError(f"'{key}': must be at least 1, got {value}")
        if accu > 1 and hook_accu > 1 and accu != hook_accu:
            raise ConfigError(f"'SOLVER.ACCU_STEP' ({accu}) and BackwardHook's 'ACCUMULATE_STEP' ({hook_accu}) "
                              f"disagree: set one of them")
        clip = float(c.GRADIENT_CLIP) if c.GRADIENT_CLIP is not None and c.GRADIENT_CLIP > 0 else None
        return cls(max(accu, hook_accu), clip, int(c.MAX_NONFINITE_STEPS), int(c.EMPTY_CACHE_STEP))


class TrainStep:
    """Forward, loss, backward (scaled when an fp16 GradScaler is given); at every
    `accu_step`-th micro-batch: unscale, clip, optimizer step, LR step, zero the gradients.
    A non-finite loss drops its whole optimizer step on every rank; it is counted, and
    training stops after `max_nonfinite_steps` of them in a row."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, settings: StepSettings, *,
                 parameters: Sequence[torch.nn.Parameter], lr_scheduler: Any = None,
                 scaler: torch.amp.GradScaler | None = None,
                 autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                 logger: logging.Logger | None = None):
        self.model, self.optimizer, self.settings = model, optimizer, settings
        self.parameters, self.lr_scheduler, self.scaler = list(parameters), lr_scheduler, scaler
        self.autocast, self.logger = autocast, logger or logging.getLogger('scepter')
        self.backward: Callable[[torch.Tensor], Any] = torch.Tensor.backward  # Lightning: its manual_backward
        self._nonfinite = False  # a non-finite loss in this step's micro-batches so far

    def __call__(self, batch: dict[str, Any], state: LoopState) -> None:
        with self.autocast():
            state.iter_outputs = self.model(**batch)
        loss = self._loss(state.iter_outputs)
        self._nonfinite |= not bool(torch.isfinite(loss.detach()).all())
        # Backward even a non-finite loss: under DDP every rank must join each gradient all-reduce.
        scaled = loss / self.settings.accu_step
        self.backward(self.scaler.scale(scaled) if self.scaler else scaled)
        state.total_iter += 1
        state.is_step_end = state.total_iter % self.settings.accu_step == 0
        if not state.is_step_end:
            return
        state.step += 1
        if self._step_is_nonfinite():
            self._skip(state, loss)
        else:
            state.nonfinite_in_row = 0
            self._update(state)
        self.optimizer.zero_grad(set_to_none=True)
        if self.settings.empty_cache_step > 0 and state.step % self.settings.empty_cache_step == 0 \
                and torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _update(self, state: LoopState) -> None:
        if self.scaler:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
        if self.settings.gradient_clip:
            norm = torch.nn.utils.clip_grad_norm_(self.parameters, self.settings.gradient_clip)
            state.log_values['grad_norm'] = float(norm)
        if self.scaler:
            self.scaler.step(self.optimizer)  # skips the step itself when fp16 gradients overflowed
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.lr_scheduler is not None:
            self.lr_scheduler.step()

    @staticmethod
    def _loss(outputs: Any) -> torch.Tensor:
        loss = outputs.get('loss') if isinstance(outputs, dict) else None
        if not isinstance(loss, torch.Tensor):
            keys = sorted(outputs) if isinstance(outputs, dict) else type(outputs).__name__
            raise ScepterError(f"the model's forward_train must return a dict with a 'loss' tensor; got {keys}")
        if not loss.requires_grad:
            raise ScepterError("the model's loss has no gradient: nothing trains "
                               "(check SOLVER.FREEZE / SOLVER.TRAIN_MODULES and the model's FREEZE keys)")
        return loss

    def _step_is_nonfinite(self) -> bool:
        nonfinite, self._nonfinite = self._nonfinite, False
        if we.is_distributed:  # all ranks must agree, or their weights would part
            nonfinite = mean_over_ranks(float(nonfinite)) > 0
        return nonfinite

    def _skip(self, state: LoopState, loss: torch.Tensor) -> None:
        state.nonfinite_in_row += 1
        state.skipped_steps += 1
        state.log_values['skipped_steps'] = state.skipped_steps
        self.logger.warning(f'step {state.step}: loss is {float(loss.detach().float().mean())}; step skipped '
                            f'({state.nonfinite_in_row} in a row, {state.skipped_steps} in all)')
        if state.nonfinite_in_row >= self.settings.max_nonfinite_steps:
            last = state.last_checkpoint or 'none written yet'
            raise ScepterError(f'training stopped at step {state.step}: {state.nonfinite_in_row} non-finite losses '
                               f'in a row (lower the learning rate or check the data); last good checkpoint: {last}')

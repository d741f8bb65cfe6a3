"""Hooks: side concerns of the solver loop, run in priority order (lower first).

A hook sees the solver through `TrainLoop`: its settings, model, optimizer, data and one
`LoopState`. Stages: before_solve, before_all_iter, before_iter, after_iter, after_all_iter,
after_solve, after_eval. The training step itself (forward, backward, optimizer and LR steps)
is the solver's and has run when `after_iter` is called, after every micro-batch;
`state.is_step_end` tells whether an optimizer step just completed. `after_eval` runs after
each periodic evaluation (EVAL_INTERVAL), with the metrics in `state.metric_values`."""
from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from ..base import BaseObject
from ..config import Config

# Named priorities: EMA first (right after the step), checkpoints last.
PRIORITY = {
    'BACKWARD': 0, 'EMA': 10, 'LR': 20, 'DIST_SAMPLER': 30, 'METRIC': 100, 'VAL_LOSS': 150,
    'LOG': 200, 'TENSORBOARD': 210, 'PROBE': 250, 'CHECKPOINT': 300, 'LOWEST': 1000,
}
STAGES = ('before_solve', 'before_all_iter', 'before_iter', 'after_iter', 'after_all_iter', 'after_solve',
          'after_eval')


@dataclass
class LoopState:
    """Where training stands and what the last micro-batch produced. The solver owns one
    (`solver.state`); the counters go into checkpoints."""

    max_steps: int = 0
    step: int = 0                    # optimizer steps done (skipped ones included)
    total_iter: int = 0              # micro-batches done
    epoch: int = 0                   # passes over the training data (DistSamplerHook keeps it)
    is_step_end: bool = False        # the last micro-batch completed an optimizer step
    iter_outputs: dict[str, Any] = field(default_factory=dict)  # the model's forward_train outputs
    log_values: dict[str, float] = field(default_factory=dict)  # scalars for LogHook / TensorBoard
    metric_values: dict[str, float] = field(default_factory=dict)  # the last evaluation's metrics
    timing: dict[str, float] = field(default_factory=lambda: {'data': 0.0, 'iter': 0.0, 'samples': 0})
    skipped_samples: int = 0         # unreadable records the data loader left out
    skipped_steps: int = 0           # optimizer steps dropped for a non-finite loss
    nonfinite_in_row: int = 0        # ... of which the latest in a row
    last_checkpoint: str | None = None

    COUNTERS = ('step', 'total_iter', 'epoch', 'skipped_samples', 'skipped_steps')

    def counters(self) -> dict[str, int]:
        """What a checkpoint keeps of the state."""
        return {k: getattr(self, k) for k in self.COUNTERS}


@runtime_checkable
class TrainLoop(Protocol):
    """What hooks may use of the solver (BaseSolver implements it)."""

    cfg: Config
    logger: logging.Logger
    state: LoopState
    work_dir: Path
    datas: dict[str, Any]
    optimizer: torch.optim.Optimizer | None
    lr_scheduler: Any

    @property
    def unwrapped_model(self) -> torch.nn.Module: ...
    def autocast(self) -> AbstractContextManager: ...
    def save_checkpoint(self, with_state: bool = True, keep_last: int = 0) -> Path: ...


@runtime_checkable
class SamplingLoop(TrainLoop, Protocol):
    """A solver that can sample images for prompts (probes)."""

    @property
    def sample_args(self) -> dict[str, Any]: ...
    def generate_on_ranks(self, prompts: list[str], **overrides: Any) -> list[dict[str, Any]] | None: ...


class BaseHook(BaseObject):
    """A hook does nothing at any stage unless it overrides that stage's method."""

    default_priority = PRIORITY['LOWEST']
    para_dict = {
        'PRIORITY': {'value': None, 'type': (int, str),
                     'description': 'Run order (lower first): a number or a name in hooks.base.PRIORITY.'},
    }

    @property
    def priority(self) -> int:
        p = self.cfg.PRIORITY
        if p is None:
            return self.default_priority
        return PRIORITY[p.upper()] if isinstance(p, str) else int(p)

    def state_dict(self) -> dict[str, Any]:
        """State to save with a checkpoint so a resumed run continues exactly."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None

    def before_solve(self, solver: TrainLoop) -> None: ...
    def after_solve(self, solver: TrainLoop) -> None: ...
    def before_all_iter(self, solver: TrainLoop) -> None: ...
    def after_all_iter(self, solver: TrainLoop) -> None: ...
    def before_iter(self, solver: TrainLoop) -> None: ...
    def after_iter(self, solver: TrainLoop) -> None: ...
    def after_eval(self, solver: TrainLoop) -> None: ...

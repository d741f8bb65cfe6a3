"""Hooks: side concerns of the solver loop, run in priority order (lower first).

Stages: before_solve, before_all_iter, before_iter, after_iter, after_all_iter,
after_solve, before_epoch, after_epoch, after_eval. `after_iter` runs after every micro-batch;
`solver.is_step_end` tells whether an optimizer step just completed. `after_eval` runs after each
periodic evaluation (EVAL_INTERVAL), with the metrics in `solver.metric_values`."""
from __future__ import annotations

from typing import Any

from ..base import BaseObject

# Named priorities: the backward pass (and optimizer step) first, checkpoints last.
PRIORITY = {
    'BACKWARD': 0, 'EMA': 10, 'LR': 20, 'DIST_SAMPLER': 30, 'METRIC': 100, 'VAL_LOSS': 150,
    'LOG': 200, 'TENSORBOARD': 210, 'PROBE': 250, 'CHECKPOINT': 300, 'LOWEST': 1000,
}
STAGES = ('before_solve', 'before_epoch', 'before_all_iter', 'before_iter', 'after_iter',
          'after_all_iter', 'after_epoch', 'after_solve', 'after_eval')


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

    def before_solve(self, solver) -> None: ...
    def after_solve(self, solver) -> None: ...
    def before_epoch(self, solver) -> None: ...
    def after_epoch(self, solver) -> None: ...
    def before_all_iter(self, solver) -> None: ...
    def after_all_iter(self, solver) -> None: ...
    def before_iter(self, solver) -> None: ...
    def after_iter(self, solver) -> None: ...
    def after_eval(self, solver) -> None: ...

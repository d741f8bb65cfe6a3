"""RecorderHook: what the loop looked like after each optimizer step, for hook tests."""
from __future__ import annotations

from scepter_core.hooks.base import BaseHook
from scepter_core.registry import HOOKS


class RecorderHook(BaseHook):
    """After each optimizer step: the step, the learning rate it used and a copy of the weights."""

    records: list[dict] = []  # of the latest run (one run at a time in a test process)

    def before_all_iter(self, solver) -> None:
        RecorderHook.records = []

    def after_iter(self, solver) -> None:
        if solver.state.is_step_end:
            RecorderHook.records.append({
                'step': solver.state.step, 'lr': solver.optimizer.param_groups[0]['lr'],
                'weights': {k: v.detach().clone() for k, v in solver.unwrapped_model.state_dict().items()}})


if 'RecorderHook' not in HOOKS:
    HOOKS.register_class()(RecorderHook)

"""BackwardHook: the place of the training step's settings in a recipe (Scepter's keys too);
the step itself happens without it (tests/solvers)."""
from __future__ import annotations

import pytest

from scepter_core.config import Config
from scepter_core.errors import ConfigError
from scepter_core.hooks.backward import BackwardHook
from scepter_core.hooks.base import STAGES
from scepter_core.registry import HOOKS
from scepter_core.solvers.step import StepSettings


def _settings(hook_block: dict | None, accu: int = 1) -> StepSettings:
    hooks = [HOOKS.build(hook_block)] if hook_block else []
    return StepSettings.from_config(Config({'ACCU_STEP': accu}), hooks)


def test_defaults_without_the_hook_are_the_hooks_defaults():
    assert _settings(None) == _settings({'NAME': 'BackwardHook'}) == StepSettings(1, None, 5, -1)


def test_scepter_blocks_are_accepted():
    # as in Scepter's recipes: a PRIORITY (which no longer orders anything), GRADIENT_CLIP -1 meaning off
    assert _settings({'NAME': 'BackwardHook', 'PRIORITY': 10000}) == StepSettings()
    s = _settings({'NAME': 'BackwardHook', 'GRADIENT_CLIP': -1, 'ACCUMULATE_STEP': 4, 'EMPTY_CACHE_STEP': 100})
    assert s == StepSettings(accu_step=4, gradient_clip=None, empty_cache_step=100)
    assert _settings({'NAME': 'BackwardHook', 'GRADIENT_CLIP': 1, 'MAX_NONFINITE_STEPS': 2}, accu=3) == \
        StepSettings(accu_step=3, gradient_clip=1.0, max_nonfinite_steps=2)


def test_unknown_keys_and_bad_accumulation_are_errors():
    with pytest.raises(ConfigError, match='GRADIENT_CLIP'):
        HOOKS.build({'NAME': 'BackwardHook', 'GRADIENT_CLIPPING': 1.0})
    with pytest.raises(ConfigError, match="'SOLVER.ACCU_STEP': must be at least 1, got 0"):
        _settings(None, accu=0)


def test_the_hook_does_nothing_at_any_stage():
    hook = BackwardHook()
    for stage in STAGES:  # a solver of None: any use of it would raise
        getattr(hook, stage)(None)
    assert hook.state_dict() == {}

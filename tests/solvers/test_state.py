"""solvers/state.py on TinyNet: a resumed run continues exactly (weights, optimizer, LR
schedule, hooks, counters, RNG), LOAD_MODEL_ONLY loads weights only, bad paths are clear."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from scepter_core.errors import CheckpointError
from tests.solvers.tiny_net import train_tiny, weights

HOOKS = [{'NAME': 'ModelEmaHook', 'DECAY': 0.5}, {'NAME': 'LogHook', 'LOG_INTERVAL': 100, 'LOSS_CURVE': False},
         {'NAME': 'CheckpointHook', 'INTERVAL': 3}]
# Adam (state to restore), a schedule (position to restore), noise (RNG to restore), a NaN step (counters)
SOLVER = {'OPTIMIZER': {'NAME': 'AdamW', 'LEARNING_RATE': 1e-2},
          'LR_SCHEDULER': {'NAME': 'cosine', 'WARMUP_STEPS': 2, 'TOTAL_STEPS': 6},
          'MODEL': {'NAME': 'TinyNet', 'NAN_CALLS': [2]}}


def _hook(solver, name: str):
    return next(h for h in solver.hooks['train'] if type(h).__name__ == name)


def test_resume_continues_exactly(tmp_path: Path):
    straight = train_tiny(tmp_path / 'a', 6, HOOKS, **SOLVER)
    train_tiny(tmp_path / 'b', 3, HOOKS, **SOLVER)
    resumed = train_tiny(tmp_path / 'b', 6, HOOKS, RESUME_FROM='latest', **SOLVER)
    assert resumed.state.counters() == straight.state.counters() == \
        {'step': 6, 'total_iter': 6, 'epoch': 0, 'skipped_samples': 0, 'skipped_steps': 1}
    a, b = weights(straight), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = straight.optimizer.state_dict()['state'], resumed.optimizer.state_dict()['state']
    assert all(torch.equal(torch.as_tensor(sa[i][n]), torch.as_tensor(sb[i][n])) for i in sa for n in sa[i])
    assert straight.lr_scheduler.state_dict() == resumed.lr_scheduler.state_dict()
    ea, eb = _hook(straight, 'ModelEmaHook').shadow, _hook(resumed, 'ModelEmaHook').shadow
    assert all(torch.equal(ea[k], eb[k]) for k in ea)
    assert _hook(straight, 'LogHook').history == _hook(resumed, 'LogHook').history


def test_load_model_only_starts_at_step_zero(tmp_path: Path):
    first = train_tiny(tmp_path / 'a', 3, HOOKS)
    again = train_tiny(tmp_path / 'b', 0, RESUME_FROM=str(tmp_path / 'a'), LOAD_MODEL_ONLY=True)
    assert again.step == 0
    a, b = weights(first), weights(again)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_missing_checkpoint_names_the_path(tmp_path: Path):
    with pytest.raises(CheckpointError, match=f"no checkpoint at '{tmp_path / 'nowhere'}'"):
        train_tiny(tmp_path / 'a', 1, RESUME_FROM=str(tmp_path / 'nowhere'))

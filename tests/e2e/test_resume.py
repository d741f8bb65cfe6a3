"""Exact resume: 20 steps straight == 10 steps, resume, 10 steps (weights, EMA, optimizer)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from scepter_core.config import Config
from scepter_core.launch import run_worker

from .conftest import tiny_recipe


def _run(work: Path, steps: int, resume: str | None = None, workers: int = 0):
    cfg = Config(tiny_recipe(work, steps, RESUME_FROM=resume, TRAIN_HOOKS=[
        {'NAME': 'BackwardHook', 'GRADIENT_CLIP': 1.0}, {'NAME': 'ModelEmaHook', 'DECAY': 0.9},
        {'NAME': 'ValLossHook', 'VAL_INTERVAL': 5, 'NUM_BATCHES': 1},
        {'NAME': 'LogHook', 'LOG_INTERVAL': 5}, {'NAME': 'CheckpointHook', 'INTERVAL': 10}]))
    cfg.SOLVER.MODEL.USE_EMA = True
    cfg.SOLVER.TRAIN_DATA.NUM_WORKERS = workers
    cfg.SOLVER.LR_SCHEDULER = {'NAME': 'cosine', 'WARMUP_STEPS': 3, 'TOTAL_STEPS': 20}  # same plan for both
    return run_worker(cfg, 'train')


@pytest.mark.parametrize('workers', [0, 2])
def test_resume_is_bit_identical(tmp_path: Path, workers: int):
    straight = _run(tmp_path / 'a', 20, workers=workers)
    _run(tmp_path / 'b', 10, workers=workers)
    resumed = _run(tmp_path / 'b', 20, resume='latest', workers=workers)
    assert resumed.step == 20
    a, b = straight.unwrapped_model.state_dict(), resumed.unwrapped_model.state_dict()
    assert a.keys() == b.keys()
    assert any(k.startswith('model_ema.') for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    oa, ob = straight.optimizer.state_dict(), resumed.optimizer.state_dict()
    for pid, st in oa['state'].items():
        for name, v in st.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(ob['state'][pid][name])), (pid, name)
    assert straight.lr_scheduler.state_dict() == resumed.lr_scheduler.state_dict()

"""LrHook: linear warmup of the learning rate per optimizer step, unless a scheduler owns it."""
from __future__ import annotations

from pathlib import Path

import pytest

import tests.hooks.recorder  # noqa: F401  (registers RecorderHook)
from tests.hooks.recorder import RecorderHook
from tests.solvers.tiny_net import train_tiny


def test_warmup_rises_linearly_per_optimizer_step_then_holds(tmp_path: Path):
    solver = train_tiny(tmp_path, 6, [{'NAME': 'LrHook', 'WARMUP_STEPS': 4, 'WARMUP_START_LR': 0.1},
                                      {'NAME': 'RecorderHook'}], ACCU_STEP=2)
    used = [r['lr'] for r in RecorderHook.records]  # the LR each optimizer step ran with
    assert used == pytest.approx([0.1 + 0.4 * f for f in (0.25, 0.5, 0.75, 1.0, 1.0, 1.0)])
    assert solver.state.log_values['lr'] == pytest.approx(0.5)


def test_warmup_is_ignored_with_a_scheduler(tmp_path: Path, caplog):
    train_tiny(tmp_path, 3, [{'NAME': 'LrHook', 'WARMUP_STEPS': 4}, {'NAME': 'RecorderHook'}],
               LR_SCHEDULER={'NAME': 'constant'})
    assert [r['lr'] for r in RecorderHook.records] == pytest.approx([0.5] * 3)
    assert 'WARMUP_STEPS ignored' in (tmp_path / 'std_log.txt').read_text()

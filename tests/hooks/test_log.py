"""LogHook: periodic lines, the per-step loss history (micro-batches averaged) and the curve."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.solvers.tiny_net import train_tiny


def test_lines_history_and_curve(tmp_path: Path):
    solver = train_tiny(tmp_path, 4, [{'NAME': 'LogHook', 'LOG_INTERVAL': 3, 'WINDOW': 2}], ACCU_STEP=2)
    log = (tmp_path / 'std_log.txt').read_text()
    assert 'step 3/4  loss' in log and 'step 4/4  loss' in log and 'step 2/4' not in log
    history = json.loads((tmp_path / 'loss_history.json').read_text())
    assert [s for s, _ in history] == [1, 2, 3, 4]
    assert solver.state.log_values['loss'] == pytest.approx(history[-1][1])
    assert solver.state.log_values['loss_avg'] == pytest.approx((history[-2][1] + history[-1][1]) / 2)
    assert (tmp_path / 'loss_curve.png').stat().st_size > 0
    hook = solver.hooks['train'][0]
    assert hook.state_dict()['history'] == [list(x) for x in history]


def test_a_skipped_step_stays_out_of_the_average(tmp_path: Path):
    solver = train_tiny(tmp_path, 4, [{'NAME': 'LogHook', 'LOG_INTERVAL': 4}],
                        MODEL={'NAME': 'TinyNet', 'NAN_CALLS': [2]})
    assert [s for s, _ in solver.hooks['train'][0].history] == [1, 3, 4]
    assert math.isfinite(solver.state.log_values['loss_avg']) and solver.state.skipped_steps == 1

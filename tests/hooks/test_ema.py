"""ModelEmaHook: the shadow is the exponential average of the weights after each step."""
from __future__ import annotations

from pathlib import Path

import torch

import tests.hooks.recorder  # noqa: F401  (registers RecorderHook)
from tests.hooks.recorder import RecorderHook
from tests.solvers.tiny_net import train_tiny, weights


def test_shadow_follows_the_average_of_the_step_weights(tmp_path: Path):
    init = weights(train_tiny(tmp_path / 'init', 0))
    solver = train_tiny(tmp_path / 'run', 4, [{'NAME': 'ModelEmaHook', 'DECAY': 0.75, 'START_STEP': 1},
                                              {'NAME': 'RecorderHook'}])
    ema = next(h for h in solver.hooks['train'] if type(h).__name__ == 'ModelEmaHook')
    expected = dict(init)
    for rec in RecorderHook.records:  # START_STEP 1: step 1 copies, later steps average
        d = 0.0 if rec['step'] <= 1 else 0.75
        expected = {k: d * expected[k] + (1 - d) * rec['weights'][k] for k in expected}
    assert set(ema.shadow) == set(init)
    for k, v in ema.shadow.items():
        torch.testing.assert_close(v, expected[k], rtol=1e-6, atol=1e-7)  # lerp vs d*a + (1-d)*b rounding
        assert not torch.equal(v, RecorderHook.records[-1]['weights'][k])  # an average, not the last weights


def test_interval_skips_steps_and_state_round_trips(tmp_path: Path):
    solver = train_tiny(tmp_path, 3, [{'NAME': 'ModelEmaHook', 'DECAY': 0.5, 'INTERVAL': 5}])
    ema = next(h for h in solver.hooks['train'] if type(h).__name__ == 'ModelEmaHook')
    init = weights(train_tiny(tmp_path / 'init', 0))
    assert all(torch.equal(ema.shadow[k], init[k]) for k in init)  # no update before step 5
    other = type(ema)({'DECAY': 0.5})
    other.load_state_dict({'shadow': {k: v + 1 for k, v in ema.state_dict()['shadow'].items()}})
    assert all(torch.equal(other.shadow[k], init[k] + 1) for k in init)

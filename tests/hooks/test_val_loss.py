"""ValLossHook: a deterministic validation loss that leaves training's random streams alone."""
from __future__ import annotations

from pathlib import Path

import torch

from tests.solvers.tiny_net import train_tiny, weights


def test_value_is_deterministic_and_training_is_unchanged_by_it(tmp_path: Path):
    with_val = train_tiny(tmp_path / 'val', 4, [{'NAME': 'ValLossHook', 'VAL_INTERVAL': 2, 'NUM_BATCHES': 2}])
    without = train_tiny(tmp_path / 'plain', 4)
    hook = with_val.hooks['train'][0]
    assert [s for s, _ in hook.history] == [2, 4]
    assert with_val.state.log_values['val_loss'] == hook.history[-1][1]
    assert hook.value(with_val) == hook.value(with_val)  # fixed batches, noise and timesteps
    assert hook.history[0][1] != hook.history[1][1]  # ... of weights that changed
    a, b = weights(with_val), weights(without)
    assert all(torch.equal(a[k], b[k]) for k in a)  # TinyNet draws noise: a shifted stream would show

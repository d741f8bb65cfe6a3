"""CheckpointHook: every INTERVAL steps and at the end, KEEP_LAST pruning, the `latest`
pointer, and no checkpoint of weights right after a non-finite loss."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from scepter_core.solvers.state import read_training_state
from tests.solvers.tiny_net import train_tiny, weights


def test_interval_last_and_keep_last(tmp_path: Path):
    solver = train_tiny(tmp_path, 5, [{'NAME': 'CheckpointHook', 'INTERVAL': 2, 'KEEP_LAST': 2}])
    root = tmp_path / 'checkpoints'
    assert sorted(d.name for d in root.glob('step-*')) == ['step-000004', 'step-000005']
    assert (root / 'latest').read_text().strip() == 'step-000005'
    assert solver.state.last_checkpoint == str(root / 'step-000005')
    saved = load_file(str(root / 'step-000005' / 'model.safetensors'))
    assert all(torch.equal(saved[k], v) for k, v in weights(solver).items())
    state = read_training_state(root / 'step-000005')
    assert (state['step'], state['total_iter'], state['skipped_steps']) == (5, 5, 0)
    assert (root / 'step-000005' / 'config.yaml').is_file()


def test_without_training_state_and_without_save_last(tmp_path: Path):
    train_tiny(tmp_path, 3, [{'NAME': 'CheckpointHook', 'INTERVAL': 2, 'SAVE_LAST': False,
                              'SAVE_TRAINING_STATE': False}])
    root = tmp_path / 'checkpoints'
    assert [d.name for d in root.glob('step-*')] == ['step-000002']
    assert read_training_state(root / 'step-000002') is None


def test_no_checkpoint_right_after_a_skipped_step(tmp_path: Path):
    solver = train_tiny(tmp_path, 4, [{'NAME': 'CheckpointHook', 'INTERVAL': 2, 'SAVE_LAST': False}],
                        MODEL={'NAME': 'TinyNet', 'NAN_CALLS': [4]})
    assert solver.state.skipped_steps == 1
    assert [d.name for d in (tmp_path / 'checkpoints').glob('step-*')] == ['step-000002']

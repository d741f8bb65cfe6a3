"""Safe resume on TinyNet: no training state -> one refusal, never a restart that overwrites
newer checkpoints; a new LEARNING_RATE is applied; a changed model or optimizer is refused
naming the keys unless LOAD_MODEL_ONLY; a schedule that follows MAX_STEPS warns once."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from scepter_core.errors import CheckpointError
from tests.solvers.tiny_net import train_tiny, weights

HOOKS = [{'NAME': 'CheckpointHook', 'INTERVAL': 2}]


def _steps(work: Path) -> list[str]:
    return sorted(d.name for d in (work / 'checkpoints').glob('step-*'))


def _mtimes(work: Path) -> dict[str, int]:
    return {str(f): f.stat().st_mtime_ns for f in (work / 'checkpoints').rglob('*') if f.is_file()}


def test_no_training_state_refuses_and_keeps_every_checkpoint(tmp_path: Path):
    work = tmp_path / 'w'
    train_tiny(work, 4, HOOKS)
    for d in (work / 'checkpoints').glob('step-*'):
        (d / 'training_state.pt').unlink()
    before = _mtimes(work)
    with pytest.raises(CheckpointError, match=r"step-000004'.*no training_state\.pt.*LOAD_MODEL_ONLY=true"):
        train_tiny(work, 6, HOOKS, RESUME_FROM='latest')
    # the weights alone, in the same folder: would restart at 0 over step-000002 and -4: refused too
    with pytest.raises(CheckpointError, match='already holds step-000004, newer than step 0'):
        train_tiny(work, 6, HOOKS, RESUME_FROM='latest', LOAD_MODEL_ONLY=True)
    assert _mtimes(work) == before and _steps(work) == ['step-000002', 'step-000004']


def test_older_checkpoint_or_fresh_run_never_overwrites_newer(tmp_path: Path):
    work = tmp_path / 'w'
    train_tiny(work, 4, HOOKS)
    before = _mtimes(work)
    with pytest.raises(CheckpointError, match='already holds step-000004, newer than step 2'):
        train_tiny(work, 6, HOOKS, RESUME_FROM=str(work / 'checkpoints' / 'step-000002'))
    with pytest.raises(CheckpointError, match='newer than step 0'):
        train_tiny(work, 6, HOOKS)
    assert _mtimes(work) == before


def test_latest_behind_a_finished_save_resumes_from_the_newest(tmp_path: Path):
    work = tmp_path / 'w'
    straight = train_tiny(tmp_path / 's', 6, HOOKS)
    train_tiny(work, 4, HOOKS)
    (work / 'checkpoints' / 'latest').write_text('step-000002\n')  # killed between rename and pointer
    resumed = train_tiny(work, 6, HOOKS, RESUME_FROM='latest')
    a, b = weights(straight), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_new_learning_rate_is_applied_with_one_warning(tmp_path: Path):
    work = tmp_path / 'w'
    train_tiny(work, 2, HOOKS)
    resumed = train_tiny(work, 4, HOOKS, RESUME_FROM='latest',
                         OPTIMIZER={'NAME': 'SGD', 'LEARNING_RATE': 0.125, 'MOMENTUM': 0.0})
    assert [g['lr'] for g in resumed.optimizer.param_groups] == [0.125]
    log = (work / 'std_log.txt').read_text()
    assert log.count('LEARNING_RATE: 0.5 in the checkpoint, 0.125 now: applied from step 2') == 1


def test_changed_model_or_optimizer_is_refused_naming_the_keys(tmp_path: Path):
    work = tmp_path / 'w'
    train_tiny(work, 2, HOOKS)
    with pytest.raises(CheckpointError, match=r'recipe changed in SOLVER\.MODEL\.WIDTH \(.*LOAD_MODEL_ONLY=true'):
        train_tiny(work, 4, HOOKS, RESUME_FROM='latest', MODEL={'NAME': 'TinyNet', 'WIDTH': 16})
    adam = {'NAME': 'AdamW', 'LEARNING_RATE': 0.01}
    with pytest.raises(CheckpointError, match=r'recipe changed in SOLVER\.OPTIMIZER\.NAME, SOLVER\.OPTIMIZER\.'):
        train_tiny(work, 4, HOOKS, RESUME_FROM='latest', OPTIMIZER=adam)
    # the weights alone, in another work dir: trains from step 0 with the new optimizer
    other = train_tiny(tmp_path / 'o', 1, HOOKS, RESUME_FROM=str(work), LOAD_MODEL_ONLY=True, OPTIMIZER=adam)
    assert other.step == 1 and 'Adam' in type(other.optimizer).__name__


def test_schedule_following_max_steps_warns_on_another_length(tmp_path: Path):
    work = tmp_path / 'w'
    cosine = {'NAME': 'cosine', 'WARMUP_STEPS': 1}
    train_tiny(work, 2, HOOKS, LR_SCHEDULER=cosine)
    train_tiny(work, 4, HOOKS, RESUME_FROM='latest', LR_SCHEDULER=cosine)
    log = (work / 'std_log.txt').read_text()
    assert log.count('SOLVER.MAX_STEPS: 2 in the checkpoint, 4 now: the cosine schedule decays over') == 1
    fixed = {**cosine, 'TOTAL_STEPS': 6}  # one schedule for both: no warning
    train_tiny(tmp_path / 'f', 2, HOOKS, LR_SCHEDULER=fixed)
    train_tiny(tmp_path / 'f', 4, HOOKS, RESUME_FROM='latest', LR_SCHEDULER=fixed)
    assert 'SOLVER.MAX_STEPS' not in (tmp_path / 'f' / 'std_log.txt').read_text()

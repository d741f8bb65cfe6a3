"""Training runs started by the Studio: a separate process that a stop leaves with a loadable
last checkpoint, and that resumes from it."""
from __future__ import annotations

import time

import pytest

from scepter_core.checkpoint import checkpoint_step
from scepter_core.inference import build_model
from scepter_studio.runs import RunManager

pytestmark = pytest.mark.timeout(600)


def _wait_for(check, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f'timed out after {timeout} s waiting for {what}')


def test_stop_leaves_the_last_checkpoint_loadable_and_resume_continues(studio_root, tmp_path):
    runs = RunManager(tmp_path / 'runs', stop_timeout=60)
    recipe = studio_root / 'recipes' / 'tiny.yaml'
    run = runs.start('long', recipe, ['SOLVER.MAX_STEPS=100000'])
    assert runs.get('long').state == 'running'
    work = run.dir
    _wait_for(lambda: (checkpoint_step(work) or 0) >= 2, 300, 'a first checkpoint')
    stopped = runs.stop('long')
    assert stopped.state == 'stopped' and runs.get('long').state == 'stopped'
    step = checkpoint_step(work)
    assert step and step % 2 == 0
    model, _ = build_model(str(work))  # the recipe saved beside it, the weights of the last step
    assert sum(p.numel() for p in model.parameters()) > 0
    log = runs.log_tail('long', 200)
    assert 'scepter_cli train' in log

    runs.start('long', recipe, resume=True)
    _wait_for(lambda: (checkpoint_step(work) or 0) > step, 300, 'a checkpoint after the resumed step')
    runs.stop('long')
    assert 'resum' in runs.log_tail('long', 400).lower()
    steps = [s for s, _ in runs.loss_points('long')]
    assert steps[0] == 1 and max(steps) > step

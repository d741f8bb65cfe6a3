"""A worker that dies (an exception, or SIGKILL) ends the whole job promptly: non-zero exit,
a message naming the rank, and no worker left running."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from .conftest import dist_recipe, scepter


def _alive(pid: int) -> bool:
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().split(')')[-1].split()[0] != 'Z'  # a zombie has exited
    except FileNotFoundError:
        return False


@pytest.mark.parametrize('how,message', [
    ('raise', 'worker rank 1 failed: RuntimeError: rank 1 breaks down on purpose at step 1'),
    ('kill', 'worker rank 1 died from signal SIGKILL'),
])
def test_dying_worker_ends_the_job(tmp_path: Path, how: str, message: str):
    recipe = dist_recipe(tmp_path, 50, DIE_RANK=1, DIE_STEP=1, DIE_HOW=how)
    start = time.monotonic()
    proc = scepter(tmp_path, 'train', '--cfg', str(recipe), timeout=180)
    took = time.monotonic() - start
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert message in proc.stderr and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    assert took < 120, took  # start-up included; the failure itself ends the job in seconds
    pids = [int(f.read_text()) for f in (tmp_path / 'work').glob('pid-rank*')]
    assert len(pids) == 2 and not any(_alive(p) for p in pids), pids
    assert not (tmp_path / 'work' / 'checkpoints' / 'step-000002').exists()

"""Attack corpus, faults, on real `scepter train` processes: SIGKILL at random moments (x10),
SIGINT and SIGTERM (a checkpoint, exit 130 / 143, a resume), a second signal, late signals
after the stop, each in one process, 2 gloo processes of the spawn launcher and under
Lightning (1 and 2 processes), two trainings on one WORK_DIR, a read-only work dir, NaN from
a huge learning rate. After each: the previous checkpoint still loads and `latest` names a
complete one."""
from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from harness import ROOT, cli, judge

from scepter_core.checkpoint import load_state_dict
from scepter_core.solvers.state import resolve_checkpoint, step_dirs, step_number
from tests.e2e.conftest import tiny_recipe, write_recipe

LONG = 100000  # steps: the run only ends when the attack ends it
# --set lines of each launcher, and its number of ranks
LAUNCHERS = {'one': ([], 1), 'spawn2': (['ENV.NUM_PROCESSES=2'], 2), 'lightning': (['ENV.USE_PL=true'], 1),
             'lightning2': (['ENV.USE_PL=true', 'ENV.NUM_PROCESSES=2'], 2)}
pytestmark = pytest.mark.timeout(1800)  # real processes, each starting torch: slow on a busy machine


def recipe(tmp: Path, work: Path, interval: int = 1, log: int = 1000, **solver: object) -> Path:
    cfg = tiny_recipe(work, LONG, **solver)
    cfg['SOLVER']['TRAIN_DATA']['BATCH_SIZE'] = 2
    cfg['SOLVER']['TRAIN_HOOKS'] = [{'NAME': 'BackwardHook'}, {'NAME': 'LogHook', 'LOG_INTERVAL': log},
                                    {'NAME': 'CheckpointHook', 'INTERVAL': interval, 'KEEP_LAST': 2}]
    return write_recipe(tmp / 'recipe.yaml', cfg)


def sets(launcher: str) -> list[str]:
    return [x for s in LAUNCHERS[launcher][0] for x in ('--set', s)]


def start(path: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, 'HF_HUB_OFFLINE': '1', 'PYTHONPATH': str(ROOT), 'SCEPTER_PROGRESS': '0',
           'OMP_NUM_THREADS': '1'}
    return subprocess.Popen([sys.executable, '-m', 'scepter_cli', 'train', '--cfg', str(path), *args], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def newest(work: Path) -> int:
    steps = step_dirs(work / 'checkpoints')
    return step_number(steps[-1]) if steps else 0


def wait_for_step(proc: subprocess.Popen, work: Path, after: int, timeout: float = 240) -> int:
    """Wait until a checkpoint newer than `after` is on disk (the run is training)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if newest(work) > after:
            return newest(work)
        if proc.poll() is not None:
            raise AssertionError(f'training ended early ({proc.returncode}):\n{proc.communicate()[1][-3000:]}')
        time.sleep(0.05)
    proc.kill()
    raise AssertionError('no checkpoint appeared')


def finish(proc: subprocess.Popen, timeout: float = 120) -> subprocess.CompletedProcess:
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def loads(work: Path) -> bool:
    """`latest` names a complete checkpoint and every step directory loads."""
    try:
        resolve_checkpoint('latest', work)
        for d in step_dirs(work / 'checkpoints'):
            load_state_dict(d / 'model.safetensors')
            torch.load(d / 'training_state.pt', weights_only=True)
    except Exception:
        return False
    return True


def test_sigkill_at_random_moments_keeps_the_last_checkpoint(tmp_path: Path):
    work = tmp_path / 'w'
    path = recipe(tmp_path, work)
    rng = random.Random(20)
    for i in range(10):
        before = newest(work)
        proc = start(path, *(['--resume', 'latest'] if before else []))
        wait_for_step(proc, work, before)
        time.sleep(rng.uniform(0.0, 0.6))  # in a step, in a save, in a prune: wherever it is
        proc.kill()
        done = finish(proc)
        assert done.returncode == -signal.SIGKILL
        judge(f'SIGKILL {i + 1} of 10', done, intact=lambda: loads(work), error=False)
        assert newest(work) > before  # training went on from the previous kill's checkpoint
    assert not list((work / 'checkpoints').glob('.step-*'))[1:]  # at most the one killed save's leftover


def wait_for_log(proc: subprocess.Popen, work: Path, text: str) -> None:
    while not (work / 'std_log.txt').is_file() or text not in (work / 'std_log.txt').read_text():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.05)


@pytest.mark.parametrize('sig, launcher', [(signal.SIGINT, 'one'), (signal.SIGTERM, 'one'),
                                           (signal.SIGTERM, 'spawn2'),
                                           (signal.SIGTERM, 'lightning'), (signal.SIGTERM, 'lightning2')])
def test_signal_finishes_the_step_saves_and_resumes(tmp_path: Path, sig: signal.Signals, launcher: str):
    work = tmp_path / 'w'
    path = recipe(tmp_path, work, interval=1000, log=1)  # no periodic checkpoint: the signal's is the only one
    proc = start(path, *sets(launcher))
    wait_for_log(proc, work, 'step 2/')
    proc.send_signal(sig)  # to the command alone (as `kill PID`): it passes the stop on to the other ranks
    done = finish(proc)
    line = judge(f'{sig.name} while training ({launcher})', done, codes=[128 + sig], names=[sig.name, 'checkpoint'],
                 intact=lambda: loads(work))
    step = newest(work)
    assert step > 0 and f'after step {step}' in line
    assert len(step_dirs(work / 'checkpoints')) == 1  # one checkpoint, of the step every rank stopped after
    state = torch.load(work / 'checkpoints' / f'step-{step:06d}' / 'training_state.pt', weights_only=True)
    ranks = LAUNCHERS[launcher][1]
    assert state['step'] == step and state['world_size'] == ranks and len(state['rng_per_rank']) == ranks
    assert done.stderr.count(f'{sig.name}: finishing this step') == 1  # one warning, not one per rank
    resumed = cli('train', '--cfg', str(path), '--resume', 'latest', '--set', f'SOLVER.MAX_STEPS={step + 1}',
                  *sets(launcher))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert newest(work) == step + 1


@pytest.mark.parametrize('launcher', ['one', 'spawn2', 'lightning2'])
def test_a_second_signal_stops_at_once(tmp_path: Path, launcher: str):
    work = tmp_path / 'w'
    path = recipe(tmp_path, work)
    proc = start(path, *sets(launcher))
    wait_for_step(proc, work, 0)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)  # the first one's handler has run; the step or its checkpoint is under way
    proc.send_signal(signal.SIGINT)
    done = finish(proc)
    line = judge(f'SIGINT twice ({launcher})', done, codes=[130], intact=lambda: loads(work))
    # in the step or its checkpoint: at once; after the checkpoint (a fast step): ignored, the stop's own line
    assert 'again: stopped at once' in line or 'stopped by SIGINT after step' in line, line


@pytest.mark.parametrize('launcher', ['one', 'spawn2', 'lightning2'])
def test_signals_after_the_stop_is_reported_are_ignored(tmp_path: Path, launcher: str):
    # CI once saw a second Ctrl-C land after the stop's line, in interpreter shutdown, as a
    # KeyboardInterrupt traceback: Lightning's teardown had put back Python's default handler.
    work = tmp_path / 'w'
    path = recipe(tmp_path, work, interval=1000, log=1)
    proc = start(path, *sets(launcher))
    wait_for_log(proc, work, 'step 2/')
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.extend(iter(proc.stderr.readline, '')), daemon=True)
    reader.start()
    proc.send_signal(signal.SIGINT)
    while proc.poll() is None and not any(ln.startswith('error: stopped by') for ln in err):
        time.sleep(0.005)
    while proc.poll() is None:  # every moment of the exit that follows, to the last atexit
        proc.send_signal(signal.SIGINT)
        time.sleep(0.005)
    reader.join(60)
    done = subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.read(), ''.join(err))
    line = judge(f'SIGINT after the stop ({launcher})', done, codes=[130], names=['stopped by SIGINT after step'],
                 intact=lambda: loads(work))
    assert 'SIGINT again:' not in done.stderr, line


def test_two_trainings_on_one_work_dir(tmp_path: Path):
    work = tmp_path / 'w'
    path = recipe(tmp_path, work)
    first = start(path)
    wait_for_step(first, work, 0)
    second = cli('train', '--cfg', str(path), '--resume', 'latest')
    still = first.poll() is None
    first.send_signal(signal.SIGTERM)
    finish(first)
    assert still
    judge('second training on one WORK_DIR', second, names=[f'PID {first.pid}', str(work)],
          intact=lambda: loads(work))
    # the first is gone: its lock goes with it, and the next run takes over
    again = cli('train', '--cfg', str(path), '--resume', 'latest', '--set', f'SOLVER.MAX_STEPS={newest(work) + 1}')
    assert again.returncode == 0, again.stderr[-3000:]


def _read_only(work: Path, args: list[str]) -> subprocess.CompletedProcess:
    """`scepter train` with `work` read-only: a read-only bind mount (root ignores modes), else chmod."""
    env = {**os.environ, 'HF_HUB_OFFLINE': '1', 'PYTHONPATH': str(ROOT), 'SCEPTER_PROGRESS': '0'}
    cmd = [sys.executable, '-m', 'scepter_cli', 'train', *args]
    if os.geteuid() != 0:
        for p in [work, *work.rglob('*')]:
            p.chmod(p.stat().st_mode & ~0o222)
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if shutil.which('unshare') is None:
        pytest.skip('running as root without unshare: no way to make a folder read-only')
    script = 'mount --bind -o ro "$0" "$0" && exec "$@"'
    proc = subprocess.run(['unshare', '-m', 'sh', '-c', script, str(work), *cmd], env=env, capture_output=True,
                          text=True, timeout=300)
    if 'mount:' in proc.stderr:
        pytest.skip(f'no read-only bind mount here: {proc.stderr.strip()}')
    return proc


def test_read_only_work_dir(tmp_path: Path):
    work = tmp_path / 'w'
    path = recipe(tmp_path, work)
    done = cli('train', '--cfg', str(path), '--set', 'SOLVER.MAX_STEPS=1')
    assert done.returncode == 0, done.stderr[-3000:]
    proc = _read_only(work, ['--cfg', str(path), '--resume', 'latest', '--set', 'SOLVER.MAX_STEPS=2'])
    judge('read-only work dir', proc, names=[str(work)], intact=lambda: loads(work))
    assert newest(work) == 1


def test_nan_from_a_huge_learning_rate(tmp_path: Path):
    work = tmp_path / 'w'
    path = recipe(tmp_path, work, OPTIMIZER={'NAME': 'SGD', 'LEARNING_RATE': 1.0e30})
    proc = cli('train', '--cfg', str(path), '--set', 'SOLVER.MAX_STEPS=20')
    judge('NaN from LEARNING_RATE 1e30', proc, names=['non-finite', 'learning rate'], intact=lambda: loads(work))

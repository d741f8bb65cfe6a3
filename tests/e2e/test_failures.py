"""Crash safety: SIGKILL during a checkpoint write, and non-finite losses."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from scepter_core.checkpoint import load_state_dict
from scepter_core.solvers.state import resolve_checkpoint

from .conftest import ROOT, run_cli, tiny_recipe, write_recipe

# User code loaded with --import: the 2nd checkpoint write stalls half-way through
# (after part of the weights file is on disk) so that the test can kill the process there.
SLOW_SAVE = '''
import os, time
import safetensors.torch as st
_orig = st.save_file
_calls = [0]
def save_file(tensors, filename, metadata=None):
    _calls[0] += 1
    if _calls[0] >= 2:
        with open(filename, 'wb') as f:
            f.write(b'partial')
            f.flush()
        open(os.environ['STALL_FLAG'], 'w').close()
        time.sleep(60)
    return _orig(tensors, filename, metadata=metadata)
st.save_file = save_file
'''


def test_sigkill_during_checkpoint_keeps_previous(tmp_path: Path):
    (tmp_path / 'slow_save.py').write_text(SLOW_SAVE)
    cfg = write_recipe(tmp_path / 'r.yaml', tiny_recipe(tmp_path / 'work', 6))
    flag = tmp_path / 'stalled'
    env = {**os.environ, 'STALL_FLAG': str(flag), 'SCEPTER_PROGRESS': '0'}
    proc = subprocess.Popen([sys.executable, '-m', 'scepter_cli', 'train', '--cfg', str(cfg),
                             '--import', str(tmp_path / 'slow_save.py')], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 180
    while not flag.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert flag.exists(), proc.communicate()[0].decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ckpts = tmp_path / 'work' / 'checkpoints'
    assert (ckpts / 'latest').read_text().strip() == 'step-000002'
    step = resolve_checkpoint('latest', tmp_path / 'work')
    assert len(load_state_dict(step / 'model.safetensors')) > 10
    assert not (ckpts / 'step-000004').exists()  # the half-written one never took the final name


NAN_MODEL = '''
import torch
from scepter_core import MODELS, TrainModule

@MODELS.register_class()
class FlakyNet(TrainModule):
    """Loss turns NaN from step NAN_FROM on; step SINGLE_NAN alone is NaN too."""
    para_dict = {'NAN_FROM': {'value': 100, 'description': ''}, 'SINGLE_NAN': {'value': -1, 'description': ''}}

    def __init__(self, cfg, logger=None):
        super().__init__(cfg, logger=logger)
        self.w = torch.nn.Parameter(torch.ones(3))
        self.calls = 0

    def forward_train(self, image=None, **kwargs):
        self.calls += 1
        loss = (self.w * image.mean()).sum() ** 2
        if self.calls >= self.cfg.NAN_FROM or self.calls == self.cfg.SINGLE_NAN:
            loss = loss * float('nan')
        return {'loss': loss}
'''


def test_nonfinite_losses_skip_then_stop(tmp_path: Path):
    (tmp_path / 'flaky.py').write_text(NAN_MODEL)
    cfg = tiny_recipe(tmp_path / 'work', 12)
    cfg['SOLVER']['MODEL'] = {'NAME': 'FlakyNet', 'NAN_FROM': 6, 'SINGLE_NAN': 2}
    cfg['SOLVER']['TRAIN_HOOKS'][0]['MAX_NONFINITE_STEPS'] = 3
    path = write_recipe(tmp_path / 'r.yaml', cfg)
    proc = run_cli('train', '--cfg', str(path), '--import', str(tmp_path / 'flaky.py'), check=False)
    assert proc.returncode == 1
    err = proc.stderr
    assert 'step 2: loss is nan; step skipped (1 in a row' in err
    assert 'training stopped at step 8: 3 non-finite losses in a row' in err
    assert 'last good checkpoint:' in err and 'step-000004' in err
    assert 'Traceback' not in err
    step = resolve_checkpoint('latest', tmp_path / 'work')
    assert step.name == 'step-000004'
    assert load_state_dict(step / 'model.safetensors')['w'].isfinite().all()

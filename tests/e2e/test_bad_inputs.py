"""Each bad input gets a one-line error (no traceback) naming the key, file or value."""
from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import run_cli, tiny_recipe, write_recipe


def _error_line(proc) -> str:
    assert 'Traceback' not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith('error:')]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_missing_config_file(tmp_path: Path):
    proc = run_cli('train', '--cfg', str(tmp_path / 'nope.yaml'), check=False)
    assert proc.returncode == 2
    assert 'nope.yaml' in _error_line(proc)


def test_unknown_key_and_bad_override(tmp_path: Path):
    cfg = tiny_recipe(tmp_path / 'w')
    cfg['SOLVER']['MODEL']['DIFFUSION_MODEL']['MODEL_CHANELS'] = 8
    path = write_recipe(tmp_path / 'r.yaml', cfg)
    proc = run_cli('train', '--cfg', str(path), check=False)
    line = _error_line(proc)
    assert proc.returncode == 2
    assert 'SOLVER.MODEL.DIFFUSION_MODEL.MODEL_CHANELS' in line and 'MODEL_CHANNELS' in line

    good = write_recipe(tmp_path / 'g.yaml', tiny_recipe(tmp_path / 'w'))
    for bad, expect in (('SOLVER.MAX_STEPS', 'expected KEY.PATH=VALUE'),
                        ('SOLVER.MAX_STEPS=ten', "'SOLVER.MAX_STEPS': expected int, got str 'ten'"),
                        ('SOLVER.TRAIN_HOOKS.9.LOG_INTERVAL=5', 'SOLVER.TRAIN_HOOKS.9')):
        proc = run_cli('train', '--cfg', str(good), '--set', bad, check=False)
        assert proc.returncode == 2 and expect in _error_line(proc), (bad, proc.stderr)


@pytest.mark.parametrize('data, expect', [
    ({'NAME': 'ImageTextPairFolderDataset', 'DATA_FOLDER': '/no/such/folder', 'BATCH_SIZE': 2}, '/no/such/folder'),
    ({'NAME': 'Text2ImageDataset', 'MODE': 'test', 'PROMPT_DATA': [], 'BATCH_SIZE': 2}, 'PROMPT'),
])
def test_bad_data(tmp_path: Path, data: dict, expect: str):
    cfg = tiny_recipe(tmp_path / 'w')
    key = 'TEST_DATA' if data.get('MODE') == 'test' else 'TRAIN_DATA'
    cfg['SOLVER'][key] = data
    path = write_recipe(tmp_path / 'r.yaml', cfg)
    proc = run_cli('test' if key == 'TEST_DATA' else 'train', '--cfg', str(path), check=False)
    assert proc.returncode in (1, 2)
    assert expect in _error_line(proc)


def test_wrong_checkpoint_for_architecture(tmp_path: Path):
    small = tiny_recipe(tmp_path / 'w1', 1)
    path = write_recipe(tmp_path / 'small.yaml', small)
    run_cli('train', '--cfg', str(path))
    big = tiny_recipe(tmp_path / 'w2', 1)
    big['SOLVER']['MODEL']['DIFFUSION_MODEL']['MODEL_CHANNELS'] = 64
    path2 = write_recipe(tmp_path / 'big.yaml', big)
    proc = run_cli('infer', '--cfg', str(path2), '--pretrained-model', str(tmp_path / 'w1'),
                   '--prompt', 'x', '--out', str(tmp_path / 'o'), check=False)
    line = _error_line(proc)
    assert proc.returncode == 1
    assert 'shape' in line and 'model.' in line

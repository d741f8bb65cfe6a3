"""The seed's quick-start code registers through --import and trains, tests and samples."""
from __future__ import annotations

from pathlib import Path

from PIL import Image

from .conftest import run_cli, tiny_recipe, write_recipe

HERE = Path(__file__).parent


def test_quickstart_network_trains_through_import(tmp_path: Path):
    cfg = tiny_recipe(tmp_path / 'work', 3, TRAIN_HOOKS=[
        {'NAME': 'BackwardHook'}, {'NAME': 'LogHook', 'LOG_INTERVAL': 1},
        {'NAME': 'ProbeDataHook', 'PROB_INTERVAL': 3}, {'NAME': 'CheckpointHook', 'INTERVAL': 3}])
    model = cfg['SOLVER']['MODEL']
    model['NAME'] = 'QuickStartLDM'
    model['SCHEDULE_ARGS'] = {'NAME': 'scaled_linear', 'BETA_MIN': 0.00085, 'BETA_MAX': 0.012}
    for key in ('IMAGE_SIZE', 'SIZE_FACTOR'):
        model.pop(key)
    model['SIZE_FACTOR'] = 4
    path = write_recipe(tmp_path / 'qs.yaml', cfg)
    run_cli('train', '--cfg', str(path), '--import', str(HERE / 'quickstart_user.py'))
    work = tmp_path / 'work'
    assert 'step 3/3' in (work / 'std_log.txt').read_text()
    assert (work / 'checkpoints' / 'step-000003' / 'model.safetensors').is_file()
    grid = work / 'probe' / 'step-000003' / 'grid.png'
    assert Image.open(grid).format == 'PNG'

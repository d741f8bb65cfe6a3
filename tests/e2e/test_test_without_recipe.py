"""`scepter test --pretrained-model FOLDER` with no recipe: the family is detected from a tiny
diffusers folder (written here by diffusers), the test data is a prompt file (`--prompts`) or a
folder of captioned images (`--data`), and the samples, grid and metrics are written as
`scepter test --cfg` writes them; the images are those `scepter infer` makes."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .conftest import run_cli
from .test_bad_inputs import _error_line
from .test_families import saved_pipeline, sd15_pipeline

PROMPTS = ['a red circle on a white background', 'a blue square on a black background']
SAMPLING = {'SAMPLE_STEPS': 2, 'SEED': 7, 'GUIDE_SCALE': 7.5, 'IMAGE_SIZE': [24, 24]}


@pytest.fixture(scope='module')
def folder(tmp_path_factory) -> Path:
    return saved_pipeline(sd15_pipeline, tmp_path_factory.mktemp('sd15'))


def _test(folder: Path, work: Path, *args: str) -> dict:
    """`scepter test` of the folder with `args` (--prompts / --data, ...); its samples and metrics."""
    sets = [x for k, v in SAMPLING.items() for x in ('--set', f'SOLVER.SAMPLE_ARGS.{k}={json.dumps(v)}')]
    proc = run_cli('test', '--pretrained-model', str(folder), *args, '--work-dir', str(work), *sets, timeout=600)
    assert 'family sd15 detected' in ' '.join(proc.stdout.split()), proc.stdout
    out = work / 'test'
    assert (out / 'grid.png').is_file()
    metrics = json.loads((out / 'metrics.json').read_text())
    assert metrics['step'] == 0  # weights from no run of ours
    return {'samples': json.loads((out / 'samples.json').read_text()), 'metrics': metrics, 'dir': out}


def _png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert('RGB')).astype(float)


@pytest.mark.timeout(600)
def test_prompt_file_is_sampled_as_infer_samples_it(folder: Path, tmp_path: Path):
    prompts = tmp_path / 'prompts.txt'
    prompts.write_text('\n'.join(PROMPTS) + '\n\n')  # a blank line is no prompt
    result = _test(folder, tmp_path / 'work', '--prompts', str(prompts))
    assert [s['prompt'] for s in result['samples']] == PROMPTS
    run_cli('infer', '--pretrained-model', str(folder), '--out', str(tmp_path / 'infer'), '--prompt', PROMPTS[0],
            '--steps', str(SAMPLING['SAMPLE_STEPS']), '--seed', str(SAMPLING['SEED']),
            '--guide-scale', str(SAMPLING['GUIDE_SCALE']), '--size', '24', '24')
    tested, inferred = _png(result['dir'] / '00000.png'), _png(tmp_path / 'infer' / '00000.png')
    assert tested.shape == (24, 24, 3) and tested.std() > 5  # a picture, not a flat fill
    assert np.abs(tested - inferred).max() <= 1  # 1/255: each side rounds its own float image


@pytest.mark.timeout(600)
def test_captioned_images_are_the_test_data(folder: Path, tmp_path: Path):
    from scepter_core.data.shapes import make_prompt, render_shape
    data = tmp_path / 'data'
    data.mkdir()
    for i, (color, shape, bg) in enumerate([('red', 'circle', 'white'), ('green', 'triangle', 'black')]):
        render_shape(color, shape, bg, 40, (20, 20, 12)).save(data / f'{i}.png')
        (data / f'{i}.txt').write_text(make_prompt(color, shape, bg))
    # PSNR compares each sample with its reference image: it fails on a batch without references
    result = _test(folder, tmp_path / 'work', '--data', str(data), '--set', 'SOLVER.METRICS=[{"NAME": "PSNR"}]')
    assert [s['prompt'] for s in result['samples']] == [(data / f'{i}.txt').read_text() for i in range(2)]
    assert 0 < result['metrics']['psnr'] < 100
    assert _png(result['dir'] / '00001.png').shape == (24, 24, 3)


def test_test_says_what_to_give(tmp_path: Path, folder: Path):
    proc = run_cli('test', check=False)
    assert proc.returncode == 2 and '--cfg' in _error_line(proc) and '--pretrained-model' in _error_line(proc)
    proc = run_cli('test', '--pretrained-model', str(folder), check=False)
    assert proc.returncode == 2 and '--prompts FILE or --data PATH' in _error_line(proc)
    prompts = tmp_path / 'p.txt'
    prompts.write_text(PROMPTS[0])
    proc = run_cli('test', '--pretrained-model', str(folder), '--prompts', str(prompts), '--data', str(tmp_path),
                   check=False)
    assert proc.returncode == 2 and 'not both' in _error_line(proc)
    proc = run_cli('test', '--pretrained-model', str(folder), '--prompts', str(tmp_path / 'none.txt'), check=False)
    assert proc.returncode == 2 and 'none.txt' in _error_line(proc)

"""Through the CLI, for every tiny example: N steps straight == k steps + `--resume latest` +
N - k steps, bit for bit (every tensor of model.safetensors, the optimizer, the schedule, the
hooks' state, every RNG stream, the counters), with 0 and 2 loader workers and 2 gloo processes.
The commands are those of issue 20, shrunk with --set (tiny batches, short sampling) and with
the probe, validation and evaluation hooks firing between the steps, where they could shift
the random streams."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from .resume_checks import assert_same_checkpoint, resume_in_two, step_dir, train_example

N, K = 4, 2
SMALL = ['SOLVER.TRAIN_DATA.BATCH_SIZE=2', f'SOLVER.LR_SCHEDULER.TOTAL_STEPS={N}']  # one schedule for both
SHAPES_HOOKS = ['SOLVER.SAMPLE_ARGS.SAMPLE_STEPS=2', 'SOLVER.EVAL_INTERVAL=2', 'SOLVER.MAX_EVAL_SAMPLES=2',
                'SOLVER.TRAIN_HOOKS.2.VAL_INTERVAL=1', 'SOLVER.TRAIN_HOOKS.2.NUM_BATCHES=1',
                'SOLVER.TRAIN_HOOKS.3.PROB_INTERVAL=1', 'SOLVER.TRAIN_HOOKS.4.INTERVAL=1']
SETS = {
    'tiny_shapes_vae': SMALL,
    'tiny_shapes': SMALL + SHAPES_HOOKS,
    'tiny_shapes_lora': SMALL + ['SOLVER.SAMPLE_ARGS.SAMPLE_STEPS=2', 'SOLVER.TRAIN_HOOKS.2.PROB_INTERVAL=1',
                                 'SOLVER.TRAIN_HOOKS.3.INTERVAL=1'],
    'tiny_folder': SMALL + ['SOLVER.SAMPLE_ARGS.SAMPLE_STEPS=2', 'SOLVER.TRAIN_HOOKS.3.INTERVAL=1'],
}


def train(example: str, root: Path, work: Path, steps: int, *extra: str, resume: bool = False) -> str:
    env = {'TINY_WORK_DIR': str(root), 'DATA_DIR': str(root / 'photos')}
    return train_example(example, work, steps, SETS[example] + list(extra), env, resume=resume)


@pytest.fixture(scope='module')
def root(tmp_path_factory) -> Path:
    """TINY_WORK_DIR with stage 1 trained straight (the VAE the other stages load) and a folder
    of captioned photos for tiny_folder."""
    root = tmp_path_factory.mktemp('tiny')
    train('tiny_shapes_vae', root, root / 'tiny_shapes_vae', N)
    photos = root / 'photos'
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(64, 64), (48, 80), (80, 48), (64, 64)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(photos / f'{i}.png')
        (photos / f'{i}.txt').write_text(f'a photo number {i}\n')
    return root


@pytest.fixture(scope='module')
def shapes_straight(root: Path) -> Path:
    """Stage 2 trained N steps straight; its checkpoint is also the LoRA / folder examples' base."""
    train('tiny_shapes', root, root / 'tiny_shapes', N)
    return root / 'tiny_shapes'


def resume_run(example: str, root: Path, work: Path, *extra: str) -> None:
    env = {'TINY_WORK_DIR': str(root), 'DATA_DIR': str(root / 'photos')}
    resume_in_two(example, work, K, N, SETS[example] + list(extra), env)


@pytest.mark.timeout(900)
def test_vae_example_resumes_exactly(root: Path, tmp_path: Path):
    resume_run('tiny_shapes_vae', root, tmp_path / 'r')
    assert_same_checkpoint(step_dir(root / 'tiny_shapes_vae', N), step_dir(tmp_path / 'r', N), N)


@pytest.mark.timeout(900)
@pytest.mark.parametrize('workers', [0, 2])
def test_shapes_example_resumes_exactly(root: Path, shapes_straight: Path, tmp_path: Path, workers: int):
    # the straight run loads with 0 workers: batches do not depend on the number of workers
    resume_run('tiny_shapes', root, tmp_path / 'r', f'SOLVER.TRAIN_DATA.NUM_WORKERS={workers}')
    assert_same_checkpoint(step_dir(shapes_straight, N), step_dir(tmp_path / 'r', N), N)


@pytest.mark.timeout(900)
@pytest.mark.parametrize('example', ['tiny_shapes_lora', 'tiny_folder'])
def test_finetune_examples_resume_exactly(root: Path, shapes_straight: Path, tmp_path: Path, example: str):
    train(example, root, tmp_path / 's', N)
    resume_run(example, root, tmp_path / 'r')
    assert_same_checkpoint(step_dir(tmp_path / 's', N), step_dir(tmp_path / 'r', N), N)


@pytest.mark.timeout(900)
def test_two_gloo_processes_resume_exactly(root: Path, tmp_path: Path):
    two = ['ENV.NUM_PROCESSES=2']
    train('tiny_shapes', root, tmp_path / 's', N, *two)
    resume_run('tiny_shapes', root, tmp_path / 'r', *two)
    a, b = step_dir(tmp_path / 's', N), step_dir(tmp_path / 'r', N)
    assert_same_checkpoint(a, b, N)
    state = torch.load(a / 'training_state.pt', weights_only=True)
    assert state['world_size'] == 2 and len(state['rng_per_rank']) == 2

"""DDP on CPU with gloo, 2 workers: spawn trains the tiny recipe from scratch, 1 process
resumes that run, torchrun's 2 workers resume it again; eval and probe outputs are gathered
from both ranks."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from scepter_core.data.samplers import LoopSampler

from .conftest import PROBE_PROMPTS, check_ranks_agree, dist_recipe, scepter, traces, weights_hash

TEST_PROMPTS = ['a blue triangle on a white background', 'a blue triangle on a black background',
                'a blue triangle on a gray background']


def _stream(start: int, count: int) -> list[int]:
    """Records at positions start.. of the global training stream (seed 7, 64 records)."""
    it = iter(LoopSampler(data_size=64, seed=7, start_sample=start))
    return [next(it)[0] for _ in range(count)]


def _check_one_tree(work: Path, steps: list[int]) -> None:
    ckpts = work / 'checkpoints'
    assert sorted(p.name for p in ckpts.iterdir()) == ['latest'] + [f'step-{s:06d}' for s in steps]
    assert (ckpts / 'latest').read_text().strip() == f'step-{steps[-1]:06d}'
    assert sorted(p.name for p in (ckpts / f'step-{steps[-1]:06d}').iterdir()) == \
        ['config.yaml', 'model.safetensors', 'training_state.pt']


def test_spawn_trains_on_two_ranks(spawn_run: Path):
    work = spawn_run / 'work'
    tr = check_ranks_agree(work, [1, 2])
    assert sorted(tr[0][0]['indices'] + tr[1][0]['indices']) == sorted(_stream(0, 8))
    _check_one_tree(work, [2])
    assert weights_hash(work / 'checkpoints' / 'step-000002') == tr[0][1]['weights']
    sd = load_file(str(work / 'checkpoints' / 'step-000002' / 'model.safetensors'))
    assert not torch.equal(sd['model_ema.out.2.weight'], sd['model.out.2.weight'])  # EMA under DDP, saved once
    assert len(list(work.glob('**/std_log.txt'))) == 1
    # the validation loss is averaged over the ranks' shards: one value, the same on every rank
    assert tr[0][1]['val_loss'] is not None and tr[0][1]['val_loss'] == tr[1][1]['val_loss']
    # probe: each rank sampled its share of the 3 prompts; rank 0 wrote all, in order
    meta = json.loads((work / 'probe' / 'step-000002' / 'meta.json').read_text())
    assert [m['prompt'] for m in meta['samples']] == PROBE_PROMPTS
    assert len(list((work / 'probe' / 'step-000002').glob('0*.png'))) == 3
    # evaluation: 3 test prompts split 2 + 1 over the ranks, gathered in dataset order
    samples = json.loads((work / 'eval' / 'step-000002' / 'samples.json').read_text())
    assert [s['prompt'] for s in samples] == TEST_PROMPTS
    assert len(list((work / 'eval' / 'step-000002').glob('*.png'))) == 4  # 3 images and the grid


def test_resume_two_to_one_then_torchrun_one_to_two(spawn_run: Path, tmp_path: Path):
    shutil.copytree(spawn_run / 'work', tmp_path / 'work')
    shutil.copy(spawn_run / 'trace_code.py', tmp_path / 'trace_code.py')
    for f in (tmp_path / 'work').glob('trace-rank*.jsonl'):
        f.unlink()
    # 2 processes -> 1: the single rank continues the global stream after the 16 samples seen
    one = scepter(tmp_path, 'train', '--cfg', str(dist_recipe(tmp_path, 4, 1)), '--resume', 'latest')
    assert one.returncode == 0, one.stderr[-3000:]
    tr = traces(tmp_path / 'work')
    assert list(tr) == [0] and [r['step'] for r in tr[0]] == [3, 4] and tr[0][0]['world'] == 1
    assert tr[0][0]['indices'] + tr[0][1]['indices'] == _stream(16, 8)
    for f in (tmp_path / 'work').glob('trace-rank*.jsonl'):
        f.unlink()
    # 1 process -> 2 (torchrun): both ranks continue after the 24 samples seen so far
    two = scepter(tmp_path, 'train', '--cfg', str(dist_recipe(tmp_path, 6, 2)), '--resume', 'latest', torchrun=2)
    assert two.returncode == 0, two.stderr[-3000:]
    tr = check_ranks_agree(tmp_path / 'work', [5, 6])
    assert sorted(tr[0][0]['indices'] + tr[1][0]['indices']) == sorted(_stream(24, 8))
    assert tr[0][0]['indices'] == [_stream(24, 8)[i] for i in (0, 2, 4, 6)]  # rank 0: even positions
    _check_one_tree(tmp_path / 'work', [2, 4, 6])
    state = torch.load(tmp_path / 'work' / 'checkpoints' / 'step-000006' / 'training_state.pt', weights_only=True)
    assert state['step'] == 6 and state['world_size'] == 2 and state['total_iter'] == 5  # 40 samples seen = 5 x 4 x 2
    assert len(state['rng_per_rank']) == 2

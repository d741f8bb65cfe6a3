"""LoopSampler shards and resume; the eval sampler; loader resume with 0 and 2 workers."""
from __future__ import annotations

import itertools

import pytest
import torch

from scepter_core.data import build_dataloader, mix_seed
from scepter_core.errors import ConfigError
from scepter_core.registry import DATASETS, SAMPLERS


def loop(n: int, rank: int = 0, world: int = 1, start: int = 0, seed: int = 7, **keys):
    return SAMPLERS.build({'NAME': 'LoopSampler', **keys}, data_size=n, seed=seed, rank=rank,
                          world_size=world, start_sample=start)


def take(sampler, k: int) -> list:
    return list(itertools.islice(iter(sampler), k))


@pytest.mark.parametrize('n', [10, 7])
def test_loop_sampler_ranks_take_disjoint_shards_of_each_epoch(n):
    ranks = [take(loop(n, r, 2), 3 * n) for r in range(2)]
    # interleaving rank 0, rank 1, ... rebuilds the global stream: whole permutations
    stream = [ranks[k % 2][k // 2][0] for k in range(3 * n)]
    epochs = [stream[i * n:(i + 1) * n] for i in range(3)]
    assert all(sorted(e) == list(range(n)) for e in epochs)
    assert epochs[0] != epochs[1]  # each epoch has its own order
    expected0 = torch.randperm(n, generator=torch.Generator().manual_seed(7)).tolist()
    assert epochs[0] == expected0
    if n % 2 == 0:
        assert not {i for i, _ in ranks[0][:n // 2]} & {i for i, _ in ranks[1][:n // 2]}
    seeds = [s for r in ranks for _, s in r]
    assert len(set(seeds)) == len(seeds)  # every sample position has its own random stream


def test_loop_sampler_resume_order_and_config():
    full = take(loop(9, 1, 3), 20)
    assert take(loop(9, 1, 3), 8) + take(loop(9, 1, 3, start=8), 12) == full
    assert [i for i, _ in take(loop(5, SHUFFLE=False), 7)] == [0, 1, 2, 3, 4, 0, 1]
    assert take(loop(5, SEED=3), 5) == take(loop(5, seed=3), 5) != take(loop(5), 5)
    with pytest.raises(ConfigError, match='empty'):
        loop(0)
    with pytest.raises(ConfigError, match='rank'):
        loop(5, rank=2, world=2)


def test_eval_sampler_shards_without_duplicates():
    shards = [list(SAMPLERS.build({'NAME': 'EvalDistributedSampler'}, data_size=5, seed=0, rank=r, world_size=2))
              for r in range(2)]
    assert [[i for i, _ in s] for s in shards] == [[0, 2, 4], [1, 3]]
    sampler = SAMPLERS.build({'NAME': 'SequentialSampler'}, data_size=5, seed=0, start_sample=3)
    assert [i for i, _ in sampler] == [3, 4] and len(sampler) == 2
    assert mix_seed(1, 2) != mix_seed(2, 1) and mix_seed(1, 2) == mix_seed(1, 2)


RANDOM_TRANSFORMS = [{'NAME': 'RandomCrop', 'SIZE': 24}, {'NAME': 'RandomHorizontalFlip'},
                     {'NAME': 'ImageToTensor'}, {'NAME': 'Normalize', 'OUTPUT_KEY': 'image'},
                     {'NAME': 'Select', 'KEYS': ['image', 'prompt']}]


def _random_shapes(workers: int, mode: str = 'train', transforms: list = RANDOM_TRANSFORMS):
    return DATASETS.build({'NAME': 'ShapesDataset', 'MODE': mode, 'IMAGE_SIZE': 32, 'NUM_SAMPLES': 13,
                           'BATCH_SIZE': 3, 'NUM_WORKERS': workers, 'TRANSFORMS': transforms})


def _batches(loader, k: int) -> list:
    return list(itertools.islice(iter(loader), k))


@pytest.mark.parametrize('workers', [0, 2])
def test_resumed_loader_yields_the_same_batches(workers):
    ds = _random_shapes(workers)
    full = _batches(build_dataloader(ds, seed=11, rank=1, world_size=2), 6)
    head = _batches(build_dataloader(ds, seed=11, rank=1, world_size=2), 2)
    tail = _batches(build_dataloader(ds, seed=11, rank=1, world_size=2, start_sample=2 * 3), 4)
    for a, b in zip(full, head + tail):
        assert torch.equal(a['image'], b['image']) and a['prompt'] == b['prompt']
    assert full[0]['image'].shape == (3, 3, 24, 24)
    # a record met again in a later epoch gets new random crops/flips (prompts are unique per record)
    views: dict[str, list] = {}
    for batch in full:
        for prompt, image in zip(batch['prompt'], batch['image']):
            views.setdefault(prompt, []).append(image)
    repeated = [v for v in views.values() if len(v) > 1]
    assert repeated and any(not torch.equal(v[0], v[1]) for v in repeated)
    reference = _batches(build_dataloader(_random_shapes(0), seed=11, rank=1, world_size=2), 6)
    assert all(torch.equal(a['image'], b['image']) for a, b in zip(full, reference))  # any worker count


def test_eval_loader_passes_once_over_its_shard():
    ds = _random_shapes(0, mode='eval', transforms=[])  # eval items: the prompt of every combination
    prompts = [[p for b in build_dataloader(ds, seed=0, rank=r, world_size=2) for p in b['prompt']]
               for r in range(2)]
    assert sorted(prompts[0] + prompts[1]) == sorted(ds[i]['prompt'] for i in range(len(ds)))
    assert abs(len(prompts[0]) - len(prompts[1])) <= 1

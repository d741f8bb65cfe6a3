"""The generated shapes dataset: determinism, hold-out, eval prompts, and the scorer."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from scepter_core.data import analyse_image, build_dataloader, parse_prompt, score_image
from scepter_core.data.shapes import COLOR_TABLE, SHAPE_FEATURES
from scepter_core.errors import ConfigError
from scepter_core.registry import DATASETS

CHAIN = [{'NAME': 'ImageToTensor'}, {'NAME': 'Normalize', 'OUTPUT_KEY': 'image'},
         {'NAME': 'Select', 'KEYS': ['image', 'prompt'], 'META_KEYS': ['data_key']}]


def shapes(**keys):
    return DATASETS.build({'NAME': 'ShapesDataset', **keys})


def pixels(ds, i: int) -> np.ndarray:
    return np.asarray(ds[i]['img'])


def test_generation_is_deterministic_and_seeded():
    a, b, c = shapes(NUM_SAMPLES=50), shapes(NUM_SAMPLES=50), shapes(NUM_SAMPLES=50, SEED=1)
    assert all(np.array_equal(pixels(a, i), pixels(b, i)) for i in range(50))
    assert sum(np.array_equal(pixels(a, i), pixels(c, i)) for i in range(50)) < 5  # new positions/sizes
    assert [a[i]['prompt'] for i in range(50)] == [c[i]['prompt'] for i in range(50)]
    item = a[0]
    assert item['img'].size == (64, 64) and item['prompt'] == 'a red circle on a white background'
    assert item['meta']['color'] == 'red' and item['meta']['data_key'] == 'shapes'


def test_holdout_is_absent_from_training_and_is_the_eval_set():
    train = shapes(NUM_SAMPLES=400, HOLDOUT=['blue triangle', 'yellow circle'])
    seen = {(train[i]['meta']['color'], train[i]['meta']['shape']) for i in range(len(train))}
    assert ('blue', 'triangle') not in seen and ('yellow', 'circle') not in seen
    assert len(seen) == 6 * 3 - 2  # every other pair appears
    evaluation = shapes(MODE='eval', HOLDOUT=['blue triangle', 'yellow circle'])
    items = [evaluation[i] for i in range(len(evaluation))]
    assert len(items) == 2 * 3 and all('img' not in it for it in items)
    assert {it['prompt'] for it in items} == {f'a {p} on a {bg} background' for p in ('blue triangle', 'yellow circle')
                                              for bg in ('white', 'black', 'gray')}
    assert items[0]['meta']['image_size'] == [64, 64]
    assert len(shapes(MODE='test')) == 6 * 3 * 3  # no hold-out: every combination


def test_items_do_not_depend_on_access_order():
    """Loader workers and shuffling read items in any order: each index is drawn from its
    own seed, not from a stream shared by the calls (timing: bench/shapes_generation.py)."""
    in_order, shuffled = shapes(NUM_SAMPLES=300, IMAGE_SIZE=32), shapes(NUM_SAMPLES=300, IMAGE_SIZE=32)
    # two instances: each renders its items afresh (a dataset keeps the images it rendered)
    shuffled = {int(i): pixels(shuffled, int(i)) for i in np.random.default_rng(0).permutation(300)}
    assert all(np.array_equal(pixels(in_order, i), shuffled[i]) for i in range(300))
    assert {shuffled[i].shape for i in range(300)} == {(32, 32, 3)}


def test_scorer_reads_back_every_generated_image():
    for size in (32, 64):
        ds = shapes(NUM_SAMPLES=300, IMAGE_SIZE=size, SHAPES=list(SHAPE_FEATURES), SIZE_RANGE=[0.25, 0.7],
                    COLORS=[c for c in COLOR_TABLE if c not in ('white', 'black')])
        for i in range(len(ds)):
            item = ds[i]
            assert score_image(item['img'], item['prompt']) == {'color': True, 'shape': True, 'background': True}
    tensor = torch.tensor(np.asarray(item['img'])).permute(2, 0, 1).float() / 255
    assert analyse_image(tensor) == analyse_image(item['img'])


def test_scorer_is_near_chance_on_shuffled_captions():
    ds = shapes(NUM_SAMPLES=540)
    items = [ds[i] for i in range(len(ds))]
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(0)).tolist()
    hits = Counter()
    for item, j in zip(items, order):
        for part, ok in score_image(item['img'], items[j]['prompt']).items():
            hits[part] += ok
    for position, part in enumerate(('color', 'shape', 'background')):
        labels = Counter(parse_prompt(it['prompt'])[position] for it in items)
        chance = sum((n / len(items)) ** 2 for n in labels.values())  # P(two random items agree)
        assert abs(hits[part] / len(items) - chance) < 0.1, part


def test_scorer_tolerates_noise_and_reports_an_empty_image():
    ds = shapes(NUM_SAMPLES=30)
    g = torch.Generator().manual_seed(0)
    for i in range(30):
        x = torch.tensor(np.asarray(ds[i]['img'])).permute(2, 0, 1).float() / 255
        noisy = (x + 0.08 * torch.randn(x.shape, generator=g)).clamp(0, 1)
        assert all(score_image(noisy, ds[i]['prompt']).values())
    blank = torch.ones(3, 64, 64)
    assert analyse_image(blank) == {'background': 'white', 'color': None, 'shape': None}
    assert score_image(blank, 'a red circle on a white background') == \
        {'color': False, 'shape': False, 'background': True}


def test_parse_prompt():
    assert parse_prompt('a red circle on a white background') == ('red', 'circle', 'white')
    assert parse_prompt('A Purple Diamond, on a gray background!') == ('purple', 'diamond', 'gray')
    assert parse_prompt('a square') == (None, 'square', None)


def test_loader_batches_and_config_errors():
    ds = shapes(NUM_SAMPLES=8, IMAGE_SIZE=32, BATCH_SIZE=4, TRANSFORMS=CHAIN)
    batch = next(iter(build_dataloader(ds, seed=0)))
    assert batch['image'].shape == (4, 3, 32, 32) and -1 <= batch['image'].min() and batch['image'].max() <= 1
    assert all(score_image((img + 1) / 2, p)['shape'] for img, p in zip(batch['image'], batch['prompt']))
    with pytest.raises(ConfigError, match=r"COLORS'.*teal"):
        shapes(COLORS=['red', 'teal'])
    with pytest.raises(ConfigError, match="HOLDOUT'.*'colour shape'"):
        shapes(HOLDOUT=['red'])
    with pytest.raises(ConfigError, match='every colour/shape pair'):
        shapes(COLORS=['red'], SHAPES=['circle'], HOLDOUT=['red circle'])

"""Missing and corrupt images: skipped, replaced, counted, logged once, and the stop."""
from __future__ import annotations

import itertools
import logging

import pytest
from image_files import COLORS, truncate, write_csv, write_image

from scepter_core.config import Config
from scepter_core.data import build_dataloader
from scepter_core.errors import ScepterError
from scepter_core.registry import DATASETS

BAD = (3, 7)  # record 3: file missing, record 7: truncated PNG


@pytest.fixture
def broken_folder(pair_folder):
    """The 6-image folder extended to 10 records, two of them unreadable."""
    rows = []
    for i in range(10):
        name = f'images/r{i}.png'
        if i != BAD[0]:
            write_image(pair_folder / name, (24, 24), COLORS[i % len(COLORS)])
        rows.append([name, f'record {i}'])
    truncate(pair_folder / f'images/r{BAD[1]}.png')
    write_csv(pair_folder / 'train.csv', ['Target:FILE', 'Prompt'], rows)
    return pair_folder


def _dataset(folder, workers: int = 0, share: float = 0.5):
    cfg = Config({'SOLVER': {'TRAIN_DATA': {
        'NAME': 'ImageTextPairFolderDataset', 'DATA_FOLDER': str(folder), 'BATCH_SIZE': 4,
        'NUM_WORKERS': workers, 'MAX_BAD_SHARE': share, 'SAMPLER': {'NAME': 'LoopSampler', 'SHUFFLE': False},
        'TRANSFORMS': [{'NAME': 'LoadImageFromFile'}, {'NAME': 'ImageToTensor', 'OUTPUT_KEY': 'image'},
                       {'NAME': 'Select', 'KEYS': ['image', 'prompt']}]}}})
    return DATASETS.build(cfg.SOLVER.TRAIN_DATA)


@pytest.mark.parametrize('workers', [0, 2])
def test_bad_images_are_replaced_counted_and_logged_once(broken_folder, caplog, workers):
    ds = _dataset(broken_folder, workers)
    with caplog.at_level(logging.WARNING):
        batches = list(itertools.islice(iter(build_dataloader(ds, seed=0)), 5))  # 20 samples = 2 epochs
    prompts = [p for b in batches for p in b['prompt']]
    # in order 0..9 twice; each bad record is replaced by the next one
    expected = [f'record {i + 1 if i in BAD else i}' for i in list(range(10)) * 2]
    assert prompts == expected
    assert all(b['image'].shape == (4, 3, 24, 24) for b in batches)
    assert sum(b['_skipped'] for b in batches) == 2 * len(BAD)
    assert all('_bad_paths' not in b for b in batches)
    warnings = [r.getMessage() for r in caplog.records if 'skipped unreadable' in r.getMessage()]
    assert len(warnings) == len(BAD)
    assert any(f'r{BAD[0]}.png' in w for w in warnings) and any(f'r{BAD[1]}.png' in w for w in warnings)
    assert all('SOLVER.TRAIN_DATA' in w for w in warnings)


def test_too_many_bad_samples_stop_the_run(broken_folder):
    loader = build_dataloader(_dataset(broken_folder, share=0.1), seed=0)
    seen = []
    with pytest.raises(ScepterError) as e:
        for batch in loader:
            seen.append(batch)
    message = str(e.value)
    assert 'SOLVER.TRAIN_DATA' in message and 'MAX_BAD_SHARE' in message and '.png' in message
    # 2 of every 12 samples read are bad (17% > 10%): it stops once 20 samples were seen
    assert len(seen) == 4 and '\n' not in message


def test_a_dataset_of_only_bad_images_fails_clearly(tmp_path):
    write_csv(tmp_path / 'train.csv', ['Target:FILE', 'Prompt'], [[f'{i}.png', 'x'] for i in range(3)])
    ds = _dataset(tmp_path)
    with pytest.raises(ScepterError, match='3 samples in a row'):
        ds[0]

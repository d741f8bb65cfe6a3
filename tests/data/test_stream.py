"""WebDatasetStream: shards split over ranks and loader workers, one bucket per batch, bad
samples skipped and named once, resume continues the stream."""
from __future__ import annotations

import itertools
import logging

import pytest
import torch
from folder_files import make_folder
from test_sources import write_shards

from scepter_core.data import build_dataloader
from scepter_core.errors import ConfigError
from scepter_core.registry import DATASETS


def stream(path, **keys):
    return DATASETS.build({'NAME': 'WebDatasetStream', 'DATA_DIR': str(path), 'RESOLUTION': 64, 'ALIGNMENT': 16,
                           'BATCH_SIZE': 2, 'CROP': 'random', 'MAX_BAD_SHARE': 0.5, **keys})


@pytest.fixture
def shards(tmp_path):
    urls = write_shards(make_folder(tmp_path / 'imgs', broken=True), tmp_path / 'shards', per_shard=3)
    assert len(urls) == 6  # 12 images, nocap.png and 4 broken files
    return tmp_path / 'shards'


def test_shards_split_over_ranks_and_workers(shards):
    data = stream(shards)
    for epoch in (0, 1):
        parts = []
        for rank in (0, 1):
            data.configure(seed=3, rank=rank, world_size=2, start_sample=0)
            mine = data.shards(epoch)
            workers = [data.shards(epoch, w, 2) for w in (0, 1)]
            assert sorted(workers[0] + workers[1]) == sorted(mine) and not set(workers[0]) & set(workers[1])
            parts.append(mine)
        assert sorted(parts[0] + parts[1]) == sorted(data.urls) and len(parts[0]) == 3
    data.configure(seed=3, rank=0, world_size=2, start_sample=0)
    assert data.shards(0) != data.shards(1)  # reshuffled each epoch
    with pytest.raises(ConfigError, match='6 shards for 8 ranks'):
        data.configure(seed=3, rank=0, world_size=8, start_sample=0)


def take(data, n, **kw):
    return list(itertools.islice(iter(build_dataloader(data, seed=3, **kw)), n))


def test_batches_from_one_bucket_bad_samples_named_once_and_exact_resume(shards, caplog):
    data = stream(shards)
    with caplog.at_level(logging.WARNING):
        full = take(data, 10)
    for batch in full:
        assert len({tuple(s) for s in batch['target_size'].tolist()}) == 1
        assert batch['image'].shape[-2:] == tuple(batch['target_size'][0].tolist())
    names = [r.message for r in caplog.records if 'skipped unreadable' in r.message]
    for bad in ('zero.png', 'text.png', 'cut.png', 'bomb.png'):
        assert sum(bad in m for m in names) == 1, bad
    resumed = take(stream(shards), 6, start_sample=4 * 2)
    for a, b in zip(full[4:], resumed):
        assert a['meta']['img_path'] == b['meta']['img_path'] and torch.equal(a['image'], b['image'])


def test_two_workers_read_disjoint_shards(tmp_path):
    folder = make_folder(tmp_path / 'sq', shapes=[(64 + i, 64 + i) for i in range(12)])  # one bucket
    write_shards(folder, tmp_path / 'sq_shards', per_shard=2)
    data = stream(tmp_path / 'sq_shards', NUM_WORKERS=2)
    batches = take(data, 6)
    # the loader takes the workers' batches in turn; each worker's 3 shards give 3 batches an epoch
    for k, batch in enumerate(batches):
        assert {p.split('#')[0] for p in batch['meta']['img_path']} <= set(data.shards(0, k % 2, 2))
    assert len({p for b in batches for p in b['meta']['img_path']}) == 12

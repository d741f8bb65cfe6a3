"""Aspect-ratio buckets: budget and alignment, the nearest bucket, crops and SDXL sizes,
one bucket per batch, a 2-process gloo run stepping the same buckets, exact resume."""
from __future__ import annotations

import itertools
import math
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from folder_files import SHAPES, make_folder

from scepter_core.data import build_dataloader
from scepter_core.data.buckets import assign_bucket, bucket_sizes, nearest_bucket, place
from scepter_core.errors import ConfigError
from scepter_core.registry import DATASETS


def folder_data(folder: Path, **keys) -> object:
    cfg = {'NAME': 'BucketImageDataset', 'DATA_DIR': str(folder), 'RESOLUTION': 64, 'ALIGNMENT': 16,
           'BATCH_SIZE': 2, **keys}
    return DATASETS.build(cfg)


@pytest.mark.parametrize('resolution,alignment,max_aspect', [(512, 64, 4.0), (1024, 64, 2.0), (64, 16, 4.0),
                                                              (96, 8, 3.0)])
def test_buckets_stay_within_the_budget_aligned_and_maximal(resolution, alignment, max_aspect):
    sizes = bucket_sizes(resolution, alignment, max_aspect)
    assert (resolution, resolution) in sizes  # the square when it is aligned
    for h, w in sizes:
        assert h * w <= resolution ** 2 and h % alignment == 0 and w % alignment == 0
        assert max(h, w) / min(h, w) <= max_aspect
        assert (w, h) in sizes  # tall and wide alike
        # maximal: one more alignment step in either side breaks the budget
        assert (h + alignment) * w > resolution ** 2 and h * (w + alignment) > resolution ** 2 \
            or max(h + alignment, w) / min(h + alignment, w) > max_aspect \
            or max(h, w + alignment) / min(h, w + alignment) > max_aspect
    with pytest.raises(ConfigError, match='ALIGNMENT'):
        bucket_sizes(32, 64)


def test_nearest_bucket_and_no_upscale():
    sizes = bucket_sizes(512, 64)
    assert nearest_bucket(1000, 1000, sizes) == (512, 512)
    assert nearest_bucket(1080, 1920, sizes) == (384, 640)  # 16:9 -> 0.6 is nearest 0.5625 on a log scale
    assert nearest_bucket(4000, 1000, sizes) == (1024, 256)
    # smaller than its bucket: not enlarged, its own size floored to the alignment instead
    assert assign_bucket(300, 500, sizes, 64) == (256, 448)
    assert assign_bucket(300, 500, sizes, 64, upscale=True) == (384, 640)
    assert assign_bucket(40, 500, sizes, 64) is None


def test_placement_center_random_and_padding():
    p = place(100, 200, (64, 64), 'center')
    assert p.resized == (64, 128) and p.crop == (0, 32) and p.target == (64, 64) and p.original == (100, 200)
    p = place(100, 200, (64, 64), 'random', draw=lambda high: high)
    assert p.crop == (0, 64)
    p = place(100, 200, (64, 64), 'none')
    assert p.resized == (32, 64) and p.crop == (-16, 0)
    with pytest.raises(ConfigError, match='CROP'):
        place(10, 10, (8, 8), 'edge')


def test_dataset_puts_each_image_in_its_nearest_bucket(tmp_path):
    data = folder_data(make_folder(tmp_path / 'imgs'), CROP='center')
    table = bucket_sizes(64, 16)
    assert len(data) == len(SHAPES) and not data.bad
    for index, (record, bucket) in enumerate(data.entries):
        h, w = SHAPES[int(os.path.basename(data.records[record]['img_path'])[:2])]
        nearest = min(table, key=lambda b: math.fabs(math.log(h / w) - math.log(b[0] / b[1])))
        bh, bw = bucket
        if nearest[0] <= h and nearest[1] <= w:
            assert bucket == nearest
        else:  # never upscaled: the image's own size, floored to the alignment
            assert bucket == (h // 16 * 16, w // 16 * 16) and h * w <= 64 * 64
        item = data[(index, 5)]
        assert item['image'].shape == (3, bh, bw) and -1 <= float(item['image'].min())
        assert item['target_size'].tolist() == [bh, bw] and item['original_size'].tolist() == [h, w]
        assert item['prompt'].startswith(f'tag{int(os.path.basename(data.records[record]["img_path"])[:2])},')
    assert data.bucket_counts()[(64, 64)] == 3 and data.bucket_counts()[(48, 64)] == 1  # 50x70: too small for 48x80


def test_crop_none_pads_and_repeat_folders(tmp_path):
    root = tmp_path / 'kohya'
    make_folder(root / '3_cat', shapes=[(64, 128)])
    make_folder(root / '1_dog', shapes=[(128, 64), (64, 64)])
    data = folder_data(root, CROP='none', FILL=255)
    assert len(data) == 3 + 2 and sorted(r['concept'] for r in data.records) == ['cat', 'dog', 'dog']
    cat = next(i for i, (r, _) in enumerate(data.entries) if data.records[r]['concept'] == 'cat')
    item = data[(cat, 0)]
    assert item['target_size'].tolist() == [48, 80] and item['crop_coords'].tolist() == [-4, 0]  # fit 40x80
    square = DATASETS.build({'NAME': 'BucketImageDataset', 'DATA_DIR': str(root / '3_cat'), 'RESOLUTION': [64],
                             'ALIGNMENT': 16, 'MAX_ASPECT': 1.0, 'CROP': 'none', 'FILL': 255})
    item = square[(0, 0)]  # 64x128 fit into 64x64: 32 rows, 16 rows of white padding above and below
    assert item['crop_coords'].tolist() == [-16, 0]
    assert torch.all(item['image'][:, :16] == 1.0) and torch.all(item['image'][:, -16:] == 1.0)


def test_multi_resolution_trains_each_image_at_each_budget(tmp_path):
    data = folder_data(make_folder(tmp_path / 'imgs', shapes=[(128, 128), (128, 256)]), RESOLUTION=[32, 64])
    # 1:2 at 32 px is as near 16x64 (1:4) as 32x32 (1:1), same area: the first in aspect order
    assert sorted(b for _, b in data.entries) == [(16, 64), (32, 32), (48, 80), (64, 64)]


def batches(data, steps: int, start: int = 0, rank: int = 0, world: int = 1, seed: int = 3) -> list[dict]:
    loader = build_dataloader(data, seed=seed, rank=rank, world_size=world, start_sample=start)
    return list(itertools.islice(iter(loader), steps))


def test_each_batch_from_one_bucket_epoch_covers_all(tmp_path):
    data = folder_data(make_folder(tmp_path / 'imgs'), BATCH_SIZE=2, CROP='random')
    seen = []
    for batch in batches(data, 40):
        assert batch['image'].shape[0] == 2
        assert len({tuple(s) for s in batch['target_size'].tolist()}) == 1
        seen.append(list(batch['meta']['img_path']))
    sampler_steps = data.sampler.steps_per_epoch
    epoch = [p for step in seen[:sampler_steps] for p in step]
    assert set(epoch) == {r['img_path'] for r in data.records}  # every image at least once per epoch
    assert len(epoch) - len(data) < 2 * len(data.buckets)  # only each bucket's last batch is topped up


def test_resume_mid_epoch_is_exact(tmp_path):
    data = folder_data(make_folder(tmp_path / 'imgs'), BATCH_SIZE=2, CROP='random', NUM_WORKERS=1,
                       CAPTION_DROPOUT=0.3, SHUFFLE_TAGS=True, KEEP_TAGS=1)
    full = batches(data, 9)
    tail = batches(data, 4, start=5 * 2)
    for a, b in zip(full[5:], tail):
        assert torch.equal(a['image'], b['image']) and a['prompt'] == b['prompt']
        assert torch.equal(a['crop_coords'], b['crop_coords'])


def _rank_main(rank: int, folder: str, init: str, out: str) -> None:
    dist.init_process_group('gloo', init_method=init, rank=rank, world_size=2)
    data = folder_data(Path(folder), BATCH_SIZE=2, CROP='random')
    shapes, paths = [], []
    for batch in batches(data, 12, rank=rank, world=2):
        shapes.append(list(batch['image'].shape[-2:]))
        paths.append(list(batch['meta']['img_path']))
    gathered = [None, None]
    dist.all_gather_object(gathered, {'shapes': shapes, 'paths': paths, 'steps': data.sampler.steps_per_epoch})
    if rank == 0:
        torch.save(gathered, out)
    dist.destroy_process_group()


@pytest.mark.timeout(180)
def test_two_gloo_ranks_step_identical_bucket_sizes(tmp_path):
    folder = make_folder(tmp_path / 'imgs')
    out = tmp_path / 'ranks.pt'
    mp.spawn(_rank_main, args=(str(folder), f'file://{tmp_path / "pg"}', str(out)), nprocs=2, join=True)
    r0, r1 = torch.load(out)
    assert r0['shapes'] == r1['shapes'] and len(set(map(tuple, r0['shapes']))) > 1
    steps = r0['steps']
    assert r0['paths'] != r1['paths']  # each rank its own slice of the global batch
    epoch = {p for r in (r0, r1) for step in r['paths'][:steps] for p in step}
    assert len(epoch) == len(SHAPES)

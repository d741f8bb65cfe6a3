"""WebDatasetStream: WebDataset tar shards read as a stream (for more images than are worth
indexing up front), shards split over ranks and loader workers, samples bucketed on the fly.

Each epoch the shard list is shuffled from (seed, epoch) alike on every rank; rank r takes
shards r, r + W, ... and loader worker w of n takes every n-th of those. Tar members are read
through fsspec and grouped into samples by webdataset's tar iterators. A worker keeps one
buffer per bucket and hands out a batch whenever a bucket holds BATCH_SIZE samples: each batch
comes from one bucket, but (unlike BucketSampler over an indexed source) the ranks do not step
through the same buckets. Bad images are skipped, counted and named once (the loader's tally).
A resume skips the batches already trained on, so the stream continues where it stopped."""
from __future__ import annotations

import itertools
import logging
from typing import Any, Iterator

import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..config import Config
from ..errors import ConfigError
from ..registry import DATASETS
from . import sources
from .base import BAD_PATHS_KEY, RNG_KEY, SKIPPED_KEY, BaseDataset
from .bucket_dataset import BUCKET_KEYS, TO_TENSOR, PlaceInBucket
from .buckets import assign_bucket, bucket_sizes
from .captions import CAPTION_KEYS, MakeCaption
from .collate import collate
from .errors import BadSampleError
from .images import DEFAULT_MAX_PIXELS, decode_rgb
from .samplers import mix_seed


def tar_samples(url: str) -> Iterator[dict]:
    """The samples of one shard ({'__key__', '__url__', ext: bytes}) through fsspec."""
    from webdataset.tariterators import group_by_keys, tar_file_iterator
    fs, path = sources.url_to_fs(url)
    with fs.open(path, 'rb') as f:
        files = ({**member, '__url__': url} for member in tar_file_iterator(f))
        yield from group_by_keys(files)


@DATASETS.register_class()
class WebDatasetStream(BaseDataset, IterableDataset):
    """WebDataset shards streamed (split over ranks and workers) into one-bucket batches."""

    para_dict = {
        'DATA_DIR': {'value': '', 'type': str, 'description': 'Shards: a .tar, a brace pattern or a folder of .tar.'},
        **{k: v for k, v in BUCKET_KEYS.items() if k != 'RESOLUTION'},
        'RESOLUTION': {'value': 512, 'type': int, 'description': 'Pixel budget: buckets hold at most RESOLUTION**2 pixels.'},
        'DEFAULT_CAPTION': {'value': '', 'type': str, 'description': 'Caption of samples that have none.'},
        'MAX_PIXELS': {'value': DEFAULT_MAX_PIXELS, 'type': int, 'description': 'Larger images are skipped as bombs.'},
        **CAPTION_KEYS,
        'TRANSFORMS': {'value': TO_TENSOR, 'type': list, 'registry': 'TRANSFORMS',
                       'description': "Applied after the bucket crop and caption ('img' PIL, 'prompt')."},
    }

    def __init__(self, cfg: Config | dict | None = None, logger: logging.Logger | None = None):
        super().__init__(cfg, logger)
        c = self.cfg
        if not c.DATA_DIR:
            raise ConfigError(f"'{self.key_path('DATA_DIR')}': set the shards (a .tar, a pattern or a folder)")
        self.urls = sources.shard_urls(c.DATA_DIR)
        if not self.urls:
            raise ConfigError(f"'{self.key_path('DATA_DIR')}': no .tar shards in '{c.DATA_DIR}'")
        self.table = bucket_sizes(c.RESOLUTION, c.ALIGNMENT, c.MAX_ASPECT)
        self.pipeline.transforms[:0] = [PlaceInBucket(c.CROP, c.INTERPOLATION, c.FILL),
                                        MakeCaption({k: c[k] for k in CAPTION_KEYS})]
        self.seed, self.rank, self.world_size, self.start_batch = 0, 0, 1, 0

    def configure(self, seed: int, rank: int, world_size: int, start_sample: int) -> None:
        """Set by the loader: this rank's part of the stream and where a resume starts."""
        if len(self.urls) < world_size:
            raise ConfigError(f"'{self.key_path('DATA_DIR')}': {len(self.urls)} shards for {world_size} ranks; "
                              f'every rank needs at least one')
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.start_batch = start_sample // self.cfg.BATCH_SIZE

    def num_records(self) -> int:
        return len(self.urls)  # samples are not counted up front

    def shards(self, epoch: int, worker: int = 0, workers: int = 1) -> list[str]:
        g = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
        order = [self.urls[i] for i in torch.randperm(len(self.urls), generator=g).tolist()]
        return order[self.rank::self.world_size][worker::workers]

    def _item(self, sample: dict, epoch: int) -> dict:
        name = f"{sample['__url__']}#{sample['__key__']}"
        image_ext = next((e[1:] for e in sources.IMAGE_EXTENSIONS if e[1:] in sample), None)
        if image_ext is None:
            raise BadSampleError(name, 'no image in the sample')
        image = decode_rgb(sample[image_ext], f'{name}.{image_ext}', self.cfg.MAX_PIXELS)
        text = next((sample[k] for k in ('txt', 'caption') if k in sample), b'')
        captions = sources.split_captions(text.decode('utf-8', 'replace')) or \
            ([self.cfg.DEFAULT_CAPTION] if self.cfg.DEFAULT_CAPTION else [])
        bucket = assign_bucket(image.height, image.width, self.table, self.cfg.ALIGNMENT, bool(self.cfg.UPSCALE))
        if bucket is None:
            raise BadSampleError(name, f'{image.height}x{image.width} is smaller than ALIGNMENT {self.cfg.ALIGNMENT}')
        seed = mix_seed(self.seed, epoch, int.from_bytes(name.encode()[-16:], 'little'))
        item = {'img': image, 'captions': captions, '_bucket': bucket, 'meta': {'img_path': f'{name}.{image_ext}'},
                RNG_KEY: torch.Generator().manual_seed(seed)}
        item = self.pipeline(item)
        item.pop(RNG_KEY, None)
        if 'image' in item:
            item.pop('img', None)
        return item

    def batches(self, worker: int = 0, workers: int = 1) -> Iterator[dict[str, Any]]:
        """This worker's endless stream of one-bucket batches."""
        buffers: dict[tuple[int, int], list[dict]] = {}
        bad: list[str] = []
        for epoch in itertools.count():
            shards = self.shards(epoch, worker, workers)
            if not shards:
                return  # more workers than this rank's shards: this one has nothing to read
            for url in shards:
                for sample in tar_samples(url):
                    try:
                        item = self._item(sample, epoch)
                    except BadSampleError as e:
                        bad.append(e.path)
                        continue
                    buffer = buffers.setdefault(tuple(item['target_size'].tolist()), [])
                    buffer.append(item)
                    if len(buffer) == self.cfg.BATCH_SIZE:
                        batch = collate(buffer)
                        batch[SKIPPED_KEY], batch[BAD_PATHS_KEY] = len(bad), bad
                        buffer.clear()
                        bad = []
                        yield batch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        skip = len(range(worker, self.start_batch, workers))  # the loader takes workers' batches in turn
        return itertools.islice(self.batches(worker, workers), skip, None)

"""WebDatasetStream: WebDataset tar shards read as a stream (for more images than are worth
indexing up front), shards split over ranks and loader workers, samples bucketed on the fly.

Each epoch the shard list is shuffled from (seed, epoch) alike on every rank; rank r takes
shards r, r + W, ... and loader worker w of n takes every n-th of those. Tar members are read
through fsspec and grouped into samples by webdataset's tar iterators. A worker keeps one
buffer per bucket and hands out a batch whenever a bucket holds BATCH_SIZE samples: each batch
comes from one bucket. Under several processes the ranks agree on each step's bucket (`agreed`:
one all_gather of what each has ready), so every rank trains on the same bucket size at every
step; each sample is still read by one rank once per epoch. Bad images are skipped, counted and
named once (the loader's tally). A resume skips the batches already trained on, so the stream
continues where it stopped. With the latent cache on disk, a batch whose latents are all there
is handed out without decoding its images (only their headers are read, for the bucket)."""
from __future__ import annotations

import itertools
import logging
from collections import deque
from typing import Any, Iterator

import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..config import Config
from ..errors import ConfigError
from ..registry import DATASETS
from . import sources
from .base import BAD_PATHS_KEY, RNG_KEY, SKIPPED_KEY, BaseDataset
from .bucket_dataset import BUCKET_KEYS, TO_TENSOR, BucketPipeline, bytes_digest
from .buckets import assign_bucket, bucket_sizes
from .captions import CAPTION_KEYS
from .collate import collate
from .errors import BadSampleError
from .images import DEFAULT_MAX_PIXELS, decode_rgb, image_size
from .samplers import mix_seed


def tar_samples(url: str) -> Iterator[dict]:
    """The samples of one shard ({'__key__', '__url__', ext: bytes}) through fsspec."""
    from webdataset.tariterators import group_by_keys, tar_file_iterator
    fs, path = sources.url_to_fs(url)
    with fs.open(path, 'rb') as f:
        files = ({**member, '__url__': url} for member in tar_file_iterator(f))
        yield from group_by_keys(files)


def bucket_of(batch: dict) -> tuple[int, int]:
    return tuple(batch['target_size'][0].tolist())


def agreed(batches: Iterator[dict], skip: int = 0) -> Iterator[dict]:
    """`batches` (this rank's one-bucket batches) reordered so that at every step all ranks of
    the default process group hand out a batch of the same bucket: each step the ranks gather
    how many batches of each bucket they hold and take one of a bucket all of them hold (the
    largest backlog first), reading on while they share none. No batch is dropped or repeated;
    the order follows from the ranks' streams alone, so a resume replays `skip` steps exactly."""
    import torch.distributed as dist
    queues: dict[tuple[int, int], deque] = {}
    done, step = False, 0
    while True:
        held = {b: len(q) for b, q in queues.items() if q}
        views: list = [None] * dist.get_world_size()
        dist.all_gather_object(views, (held, done))
        common = set.intersection(*(set(v[0]) for v in views))
        if common:
            pick = max(common, key=lambda b: (sum(v[0][b] for v in views), b))
            batch = queues[pick].popleft()
            if step >= skip:
                yield batch
            step += 1
        elif all(v[1] for v in views):
            return  # every stream has ended and nothing is left that all ranks hold
        elif not done:
            batch = next(batches, None)
            if batch is None:
                done = True
            else:
                queues.setdefault(bucket_of(batch), deque()).append(batch)


@DATASETS.register_class()
class WebDatasetStream(BucketPipeline, BaseDataset, IterableDataset):
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
        self.install_bucket_steps()
        self.pixel_steps = self.pipeline.transforms[len(self.plan_steps):]
        self.seed, self.rank, self.world_size, self.start_batch = 0, 0, 1, 0
        self.agrees_over_ranks = False

    def configure(self, seed: int, rank: int, world_size: int, start_sample: int) -> None:
        """Set by the loader: this rank's part of the stream and where a resume starts."""
        if len(self.urls) < world_size:
            raise ConfigError(f"'{self.key_path('DATA_DIR')}': {len(self.urls)} shards for {world_size} ranks; "
                              f'every rank needs at least one')
        import torch.distributed as dist
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.start_batch = start_sample // self.cfg.BATCH_SIZE
        # decided here, in the main process (loader workers see no process group)
        self.agrees_over_ranks = world_size > 1 and dist.is_available() and dist.is_initialized()

    def num_records(self) -> int:
        return len(self.urls)  # samples are not counted up front

    def shards(self, epoch: int, worker: int = 0, workers: int = 1) -> list[str]:
        g = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
        order = [self.urls[i] for i in torch.randperm(len(self.urls), generator=g).tolist()]
        return order[self.rank::self.world_size][worker::workers]

    def _plan(self, sample: dict, epoch: int) -> dict:
        """A sample's bucket, placement, caption and latent_key, from its image's header alone."""
        name = f"{sample['__url__']}#{sample['__key__']}"
        image_ext = next((e[1:] for e in sources.IMAGE_EXTENSIONS if e[1:] in sample), None)
        if image_ext is None:
            raise BadSampleError(name, 'no image in the sample')
        path, data = f'{name}.{image_ext}', sample[image_ext]
        h, w = image_size(data, path, self.cfg.MAX_PIXELS)
        text = next((sample[k] for k in ('txt', 'caption') if k in sample), b'')
        captions = sources.split_captions(text.decode('utf-8', 'replace')) or \
            ([self.cfg.DEFAULT_CAPTION] if self.cfg.DEFAULT_CAPTION else [])
        bucket = assign_bucket(h, w, self.table, self.cfg.ALIGNMENT, bool(self.cfg.UPSCALE))
        if bucket is None:
            raise BadSampleError(name, f'{h}x{w} is smaller than ALIGNMENT {self.cfg.ALIGNMENT}')
        seed = mix_seed(self.seed, epoch, int.from_bytes(name.encode()[-16:], 'little'))
        item = {'captions': captions, '_bucket': bucket, '_size': (h, w), '_digest': bytes_digest(data),
                'meta': {'img_path': path}, RNG_KEY: torch.Generator().manual_seed(seed)}
        for step in self.plan_steps:
            item = step(item)
        item['_data'] = data
        return item

    def _decoded(self, item: dict) -> dict:
        item['img'] = decode_rgb(item.pop('_data'), item['meta']['img_path'], self.cfg.MAX_PIXELS)
        for step in self.pixel_steps:
            item = step(item)
        item.pop(RNG_KEY, None)
        if 'image' in item:
            item.pop('img', None)
        return item

    def _batch(self, buffer: list[dict], bad: list[str], partial: bool = False) -> dict | None:
        """The buffer's batch: its plans when every latent is cached, else decoded (the images
        that fail leave the buffer, which then waits for more unless `partial`)."""
        if all('_data' in i for i in buffer) and self.all_cached(buffer):
            for item in buffer:
                for key in ('_data', '_placement', RNG_KEY):
                    item.pop(key, None)
        else:
            kept = []
            for item in buffer:
                try:
                    kept.append(self._decoded(item) if '_data' in item else item)
                except BadSampleError as e:
                    bad.append(e.path)
            buffer[:] = kept
            if not buffer or (len(buffer) < self.cfg.BATCH_SIZE and not partial):
                return None
        batch = collate(buffer)
        batch[SKIPPED_KEY], batch[BAD_PATHS_KEY] = len(bad), list(bad)
        buffer.clear()
        bad.clear()
        return batch

    def batches(self, worker: int = 0, workers: int = 1, once: bool = False) -> Iterator[dict[str, Any]]:
        """This worker's endless stream of one-bucket batches; `once`: one epoch, its last
        (partial) batches included (what `scepter data cache` encodes)."""
        buffers: dict[tuple[int, int], list[dict]] = {}
        bad: list[str] = []
        for epoch in range(1) if once else itertools.count():
            shards = self.shards(epoch, worker, workers)
            if not shards:
                return  # more workers than this rank's shards: this one has nothing to read
            for url in shards:
                for sample in tar_samples(url):
                    try:
                        item = self._plan(sample, epoch)
                    except BadSampleError as e:
                        bad.append(e.path)
                        continue
                    buffer = buffers.setdefault(tuple(item['target_size'].tolist()), [])
                    buffer.append(item)
                    if len(buffer) == self.cfg.BATCH_SIZE:
                        batch = self._batch(buffer, bad)
                        if batch is not None:
                            yield batch
        for buffer in buffers.values() if once else ():
            while buffer:
                batch = self._batch(buffer[:self.cfg.BATCH_SIZE], bad, partial=True)
                del buffer[:self.cfg.BATCH_SIZE]
                if batch is not None:
                    yield batch

    def arrange(self, batches: Iterator[dict]) -> Iterator[dict]:
        """The loader's batches in the order this rank trains on them (see `agreed`)."""
        return agreed(batches, self.start_batch) if self.agrees_over_ranks else batches

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        if self.agrees_over_ranks:  # the main process replays the agreed steps (arrange)
            return self.batches(worker, workers)
        skip = len(range(worker, self.start_batch, workers))  # the loader takes workers' batches in turn
        return itertools.islice(self.batches(worker, workers), skip, None)

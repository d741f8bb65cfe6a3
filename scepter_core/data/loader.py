"""build_dataloader: a DataLoader over a dataset with its configured sampler, deterministic
worker seeds, collation, and the main-process tally of unreadable samples."""
from __future__ import annotations

import functools
import logging
import os
import random
from collections import Counter
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from ..errors import ScepterError
from ..registry import SAMPLERS
from .base import BAD_PATHS_KEY, SKIPPED_KEY, BaseDataset
from .collate import collate
from .samplers import mix_seed

MIN_SAMPLES_FOR_BAD_SHARE = 20


def seed_worker(worker_id: int, seed: int, rank: int) -> None:
    """Seeds python, numpy and torch in a worker from (seed, rank, worker id)."""
    s = mix_seed(seed, rank, worker_id)
    random.seed(s)
    np.random.seed(s % 2 ** 32)
    torch.manual_seed(s)


class BadSampleTally:
    """Counts the samples seen and skipped in the main process; warns once per bad path and
    raises once the skipped share passes the dataset's MAX_BAD_SHARE."""

    def __init__(self, dataset_name: str, max_share: float, logger: logging.Logger):
        self.dataset_name = dataset_name
        self.max_share = max_share
        self.logger = logger
        self.seen = 0
        self.skipped = 0
        self.logged: dict[str, None] = {}  # insertion-ordered: the first bad path is the example
        self.sizes: Counter = Counter()  # batches handed out per image size (h, w)
        self.samples: Counter = Counter()  # samples handed out per image size

    def update(self, batch: dict) -> None:
        paths = batch.pop(BAD_PATHS_KEY, [])
        skipped = int(batch.get(SKIPPED_KEY, 0))
        for path in paths:
            if path not in self.logged:
                self.logged[path] = None
                self.logger.warning(f"{self.dataset_name}: skipped unreadable sample '{path}'")
        self.skipped += skipped
        self.seen += skipped + _batch_len(batch)
        share = self.skipped / max(self.seen, 1)
        if self.seen >= MIN_SAMPLES_FOR_BAD_SHARE and share > self.max_share:
            example = next(iter(self.logged), '?')
            raise ScepterError(f"{self.dataset_name}: {self.skipped} of {self.seen} samples were unreadable "
                               f"({share:.0%} > MAX_BAD_SHARE {self.max_share:.0%}), e.g. '{example}'")


def _image_size(batch: dict) -> tuple[int, int, int] | None:
    """(samples, height, width) of a batch's images; from target_size when only their cached
    latents come (no 'image')."""
    image = batch.get('image')
    if isinstance(image, torch.Tensor) and image.dim() == 4:
        return image.shape[0], *image.shape[-2:]
    target = batch.get('target_size')
    if image is None and isinstance(target, torch.Tensor) and target.dim() == 2:
        return target.shape[0], *map(int, target[0].tolist())
    return None


def _batch_len(batch: dict) -> int:
    for key, value in batch.items():
        if key != 'meta' and not key.startswith('_') and hasattr(value, '__len__'):
            return len(value)
    return 0


class ScepterDataLoader(DataLoader):
    """A DataLoader whose iteration also feeds the bad-sample tally (which may stop the run)."""

    def __init__(self, dataset: BaseDataset, tally: BadSampleTally, **kwargs: Any):
        super().__init__(dataset, **kwargs)
        self.tally = tally
        dataset.tally = tally  # hooks read what was trained on from the dataset

    def __iter__(self) -> Iterator[dict]:
        arrange = getattr(self.dataset, 'arrange', None)  # a stream's ranks agree on each step's bucket
        batches = super().__iter__()
        for batch in arrange(batches) if arrange else batches:
            self.tally.update(batch)
            size = _image_size(batch)
            if size is not None:  # what was trained on: buckets.json
                self.tally.sizes[size[1:]] += 1
                self.tally.samples[size[1:]] += size[0]
            yield batch


def usable_cores() -> int:
    if hasattr(os, 'sched_getaffinity'):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def build_dataloader(dataset: BaseDataset, seed: int, rank: int = 0, world_size: int = 1,
                     start_sample: int = 0) -> DataLoader:
    """The loader for `dataset` on this rank. `start_sample`: how many samples this rank
    already consumed (resume continues the same stream of batches)."""
    cfg = dataset.cfg
    if isinstance(dataset, IterableDataset):  # a stream that batches itself (WebDatasetStream)
        return _stream_loader(dataset, seed, rank, world_size, start_sample)
    sampler_cfg = cfg.SAMPLER or {'NAME': 'LoopSampler' if dataset.mode == 'train' else 'EvalDistributedSampler'}
    batched = getattr(SAMPLERS.get(sampler_cfg['NAME']), 'yields_batches', False)
    extra = {'groups': getattr(dataset, 'groups', None), 'batch_size': cfg.BATCH_SIZE} if batched else {}
    sampler = SAMPLERS.build(sampler_cfg, logger=dataset.logger, data_size=len(dataset), seed=seed,
                             rank=rank, world_size=world_size, start_sample=start_sample, **extra)
    dataset.sampler = sampler  # the main process's sampler, for hooks (DistSamplerHook, BucketLogHook)
    workers = min(cfg.NUM_WORKERS, usable_cores())  # more only slows down; batches do not depend on it
    if workers < cfg.NUM_WORKERS:
        dataset.logger.info(f'{dataset.where}: {workers} loader workers (NUM_WORKERS {cfg.NUM_WORKERS}, '
                            f'{workers} cores)')
    return ScepterDataLoader(
        dataset, BadSampleTally(dataset.where, cfg.MAX_BAD_SHARE, dataset.logger),
        **({'batch_sampler': sampler} if batched else {'batch_size': cfg.BATCH_SIZE, 'sampler': sampler}),
        num_workers=workers, collate_fn=collate,
        pin_memory=bool(cfg.PIN_MEMORY) and torch.cuda.is_available(), drop_last=False,
        worker_init_fn=functools.partial(seed_worker, seed=seed, rank=rank) if workers else None,
        generator=torch.Generator().manual_seed(mix_seed(seed, rank)))


def _as_is(batch: Any) -> Any:
    return batch


def _stream_loader(dataset: Any, seed: int, rank: int, world_size: int, start_sample: int) -> DataLoader:
    dataset.configure(seed, rank, world_size, start_sample)
    workers = min(dataset.cfg.NUM_WORKERS, usable_cores())
    return ScepterDataLoader(
        dataset, BadSampleTally(dataset.where, dataset.cfg.MAX_BAD_SHARE, dataset.logger), batch_size=None,
        num_workers=workers, collate_fn=_as_is, pin_memory=bool(dataset.cfg.PIN_MEMORY) and torch.cuda.is_available(),
        worker_init_fn=functools.partial(seed_worker, seed=seed, rank=rank) if workers else None)

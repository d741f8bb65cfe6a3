"""BucketSampler: batches of `(index, seed)` pairs, each batch from one bucket, the same
bucket on every rank at every step.

Every rank computes the same plan of each epoch from (seed, epoch): each bucket's members
shuffled and cut into global batches of world_size x batch_size (the last one topped up with
the bucket's first members again, so every sample is seen at least once per epoch and all
batches are full), then the global batches shuffled. Rank r takes slice r of the global batch
at each step. The plan has the same number of steps every epoch, so step k of the stream is
(epoch k // steps, batch k % steps): a resume starts at any step exactly."""
from __future__ import annotations

import logging
import sys
from collections import Counter
from typing import Iterator

import torch

from ..config import Config
from ..errors import ConfigError
from ..registry import SAMPLERS
from .samplers import BaseSampler, mix_seed


@SAMPLERS.register_class()
class BucketSampler(BaseSampler):
    """Built by the loader with the dataset's bucket of each sample (`groups`; without them all
    samples share one) and BATCH_SIZE."""

    para_dict = {'SHUFFLE': {'value': True, 'description': 'Shuffle within buckets and the batch order each epoch.'}}
    yields_batches = True  # the loader passes it as batch_sampler

    def __init__(self, cfg: Config | dict | None = None, logger: logging.Logger | None = None,
                 groups: list[int] | None = None, batch_size: int = 1, **kwargs):
        super().__init__(cfg, logger, **kwargs)
        groups = [0] * self.data_size if groups is None else groups  # a dataset without buckets: one
        if len(groups) != self.data_size:
            raise ConfigError(f'BucketSampler: {len(groups)} bucket ids for {self.data_size} samples')
        self.batch_size = batch_size
        self.members: dict[int, list[int]] = {}
        for index, g in enumerate(groups):
            self.members.setdefault(g, []).append(index)
        self.global_batch = batch_size * self.world_size
        self.steps_per_epoch = sum(-(-len(m) // self.global_batch) for m in self.members.values())
        if self.start_sample % batch_size:
            raise ConfigError(f'BucketSampler: resume position {self.start_sample} is not a whole number of '
                              f'batches of {batch_size}')
        self._plan_epoch, self._plan = -1, []

    def plan(self, epoch: int) -> list[list[int]]:
        """The global batches of `epoch` (identical on every rank)."""
        if epoch == self._plan_epoch:
            return self._plan
        g = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
        shuffle = bool(self.cfg.SHUFFLE)
        batches = []
        for key in sorted(self.members):
            m = self.members[key]
            order = [m[i] for i in torch.randperm(len(m), generator=g).tolist()] if shuffle else list(m)
            n = -(-len(order) // self.global_batch) * self.global_batch
            order = [order[i % len(order)] for i in range(n)]
            batches += [order[i:i + self.global_batch] for i in range(0, n, self.global_batch)]
        if shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
        self._plan_epoch, self._plan = epoch, batches
        return batches

    def batch_at(self, step: int) -> list[tuple[int, int]]:
        """This rank's batch at global step `step`."""
        epoch, k = divmod(step, self.steps_per_epoch)
        lo = self.rank * self.batch_size
        indices = self.plan(epoch)[k][lo:lo + self.batch_size]
        first = step * self.global_batch + lo
        return [(i, mix_seed(self.seed, first + j)) for j, i in enumerate(indices)]

    def steps_by_group(self, start: int, stop: int, groups: list[int]) -> Counter:
        """How many of steps [start, stop) fall in each group (bucket)."""
        counts: Counter = Counter()
        for step in range(start, stop):
            epoch, k = divmod(step, self.steps_per_epoch)
            counts[groups[self.plan(epoch)[k][0]]] += 1
        return counts

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start_sample // self.batch_size
        while True:
            yield self.batch_at(step)
            step += 1

    def __len__(self) -> int:
        return sys.maxsize

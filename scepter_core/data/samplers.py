"""Index samplers (SAMPLERS). They yield `(record_index, item_seed)` pairs: the seed gives
each sample its own random stream, so transforms draw the same numbers for the same
position of the stream in every run, with any number of workers, and after a resume."""
from __future__ import annotations

import logging
import sys
from typing import Iterator

import torch
from torch.utils.data import Sampler

from ..base import BaseObject
from ..config import Config
from ..errors import ConfigError
from ..registry import SAMPLERS

_MASK64 = (1 << 64) - 1


def mix_seed(*parts: int) -> int:
    """A well-spread 63-bit seed from integers (splitmix64 over the parts), so that
    (seed, position) and (seed + 1, position - 1) do not collide."""
    x = 0x9E3779B97F4A7C15
    for part in parts:
        x = (x ^ (int(part) & _MASK64)) & _MASK64
        x = (x + 0x9E3779B97F4A7C15) & _MASK64
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
        x ^= x >> 31
    return x >> 1


class BaseSampler(Sampler, BaseObject):
    """Built by the loader with `SAMPLERS.build(cfg, data_size=, seed=, rank=, world_size=, start_sample=)`."""

    para_dict = {
        'SEED': {'value': None, 'type': int, 'description': 'Seed of the order; empty: the run seed.'},
    }

    def __init__(self, cfg: Config | dict | None = None, logger: logging.Logger | None = None,
                 data_size: int = 0, seed: int = 2023, rank: int = 0, world_size: int = 1,
                 start_sample: int = 0):
        BaseObject.__init__(self, cfg, logger)
        if data_size <= 0:
            raise ConfigError(f'{type(self).__name__}: the dataset is empty')
        if world_size < 1 or not 0 <= rank < world_size or start_sample < 0:
            raise ConfigError(f'{type(self).__name__}: invalid rank {rank} / world size {world_size} / '
                              f'start sample {start_sample}')
        self.data_size = data_size
        self.seed = seed if self.cfg.SEED is None else self.cfg.SEED
        self.rank = rank
        self.world_size = world_size
        self.start_sample = start_sample


@SAMPLERS.register_class()
class LoopSampler(BaseSampler):
    """Endless: the global stream is epoch after epoch of a permutation seeded by
    seed + epoch; rank r takes stream positions r, r + W, r + 2W, ... (disjoint shards).
    `start_sample` (samples this rank already consumed) resumes exactly where it stopped."""

    para_dict = {'SHUFFLE': {'value': True, 'description': 'Permute each epoch (false: 0, 1, 2, ...).'}}

    def __init__(self, cfg: Config | dict | None = None, logger: logging.Logger | None = None, **kwargs):
        super().__init__(cfg, logger, **kwargs)
        self._epoch = -1
        self._order: list[int] = []

    def order(self, epoch: int) -> list[int]:
        if epoch != self._epoch:
            if self.cfg.SHUFFLE:
                g = torch.Generator().manual_seed(self.seed + epoch)
                self._order = torch.randperm(self.data_size, generator=g).tolist()
            else:
                self._order = list(range(self.data_size))
            self._epoch = epoch
        return self._order

    def position(self, local_step: int) -> int:
        """Global stream position of this rank's `local_step`-th sample."""
        return self.rank + local_step * self.world_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        step = self.start_sample
        while True:
            epoch, offset = divmod(self.position(step), self.data_size)
            yield self.order(epoch)[offset], mix_seed(self.seed, self.position(step))
            step += 1

    def __len__(self) -> int:
        return sys.maxsize


@SAMPLERS.register_class(aliases=('SequentialSampler',))
class EvalDistributedSampler(BaseSampler):
    """One pass in order; rank r takes records r, r + W, ... (no duplicates; shard sizes
    differ by at most one)."""

    def indices(self) -> range:
        return range(self.rank, self.data_size, self.world_size)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for index in list(self.indices())[self.start_sample:]:
            yield index, mix_seed(self.seed, index)

    def __len__(self) -> int:
        return max(len(self.indices()) - self.start_sample, 0)

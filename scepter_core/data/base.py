"""BaseDataset: the DataObject keys every dataset shares, the transform pipeline, and
the skipping of unreadable samples."""
from __future__ import annotations

import logging
from typing import Any

import torch
from torch.utils.data import Dataset

from ..base import Configurable
from ..config import Config
from ..errors import ConfigError, ScepterError
from ..registry import FILE_SYSTEMS
from .errors import BadSampleError
from .transforms import RNG_KEY, Compose

# Bookkeeping keys an item carries to the loader (summed / collected per batch).
SKIPPED_KEY = '_skipped'
BAD_PATHS_KEY = '_bad_paths'
# After this many unreadable samples in a row, stop looking for a readable neighbour.
MAX_CONSECUTIVE_BAD = 64


class BaseDataset(Dataset, Configurable):
    """Subclasses implement `num_records()` and `_get(index) -> item dict`.

    `dataset[(index, seed)]` (what the samplers yield) or `dataset[index]` returns the
    transformed item. A sample whose file is missing or corrupt is replaced by the next
    readable record; the item then carries `_skipped` (how many were skipped) and
    `_bad_paths` (which), which the loader totals, logs and checks against MAX_BAD_SHARE."""

    para_dict = {
        'MODE': {'value': 'train', 'choices': ('train', 'eval', 'test'),
                 'description': 'Phase: train loops endlessly, eval/test pass once.'},
        'BATCH_SIZE': {'value': 1, 'type': int, 'min': 1, 'description': 'Samples per batch (per rank).'},
        'NUM_WORKERS': {'value': 0, 'type': int, 'min': 0, 'description': 'Loader worker processes (0: in process).'},
        'PIN_MEMORY': {'value': False, 'description': 'Pin batches in page-locked memory (CUDA only).'},
        'SAMPLER': {'value': None, 'type': dict, 'registry': 'SAMPLERS',
                    'description': 'Sampler block; empty: LoopSampler for train, EvalDistributedSampler '
                                   'for eval/test.'},
        'TRANSFORMS': {'value': [], 'type': list, 'registry': 'TRANSFORMS',
                       'description': 'Transform blocks applied to each item in order.'},
        'FILE_SYSTEM': {'value': None, 'type': (dict, list), 'registry': 'FILE_SYSTEMS',
                        'description': 'File system block(s); all paths are served by FS.'},
        'MAX_BAD_SHARE': {'value': 0.1, 'type': (int, float),
                          'description': 'Stop when more than this share of the samples seen was '
                                         'unreadable (checked after 20 samples).'},
    }

    def __init__(self, cfg: Config | dict | None = None, logger: logging.Logger | None = None):
        super().__init__()
        self._init_config(cfg, logger)
        self.mode = self.cfg.MODE
        if self.cfg.BATCH_SIZE < 1 or self.cfg.NUM_WORKERS < 0:
            raise ConfigError(f"'{self.key_path('BATCH_SIZE')}': BATCH_SIZE must be >= 1 and NUM_WORKERS >= 0")
        fs_blocks = self.cfg.FILE_SYSTEM or []
        for block in fs_blocks if isinstance(fs_blocks, list) else [fs_blocks]:
            FILE_SYSTEMS.build(block, logger=self.logger)
        self.pipeline = Compose.of(self.cfg.TRANSFORMS, logger=self.logger)

    # ---- what subclasses provide -------------------------------------------------------
    def num_records(self) -> int:
        raise NotImplementedError(f'{type(self).__name__} does not implement num_records')

    def _get(self, index: int) -> dict:
        raise NotImplementedError(f'{type(self).__name__} does not implement _get')

    def neighbour(self, index: int, attempt: int) -> int:
        """The record read instead of `index` after `attempt` unreadable ones: the next."""
        return (index + attempt) % len(self)

    # ---- shared -------------------------------------------------------------------------
    @property
    def where(self) -> str:
        """How error messages name this dataset: its recipe path, else its class."""
        return self.cfg.path or type(self).__name__

    def key_path(self, key: str) -> str:
        return f'{self.cfg.path}.{key}' if self.cfg.path else f'{type(self).__name__}.{key}'

    def __len__(self) -> int:
        return self.num_records()

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, seed = key if isinstance(key, tuple) else (int(key), int(key))
        n = len(self)
        bad: list[str] = []
        for attempt in range(min(n, MAX_CONSECUTIVE_BAD)):
            try:
                raw = self._get(self.neighbour(index, attempt))
                item = dict(raw, meta=dict(raw['meta'])) if isinstance(raw.get('meta'), dict) else dict(raw)
                item[RNG_KEY] = torch.Generator().manual_seed(seed)
                item = self.pipeline(item)
            except BadSampleError as e:
                bad.append(e.path)
                continue
            item.pop(RNG_KEY, None)
            item[SKIPPED_KEY] = len(bad)
            item[BAD_PATHS_KEY] = bad
            return item
        raise ScepterError(f"{self.where}: {len(bad)} samples in a row from record {index} are unreadable "
                           f"(e.g. '{bad[0]}'); check the dataset files")

    def __repr__(self) -> str:
        return f'{type(self).__name__}(mode={self.mode}, records={len(self)})'

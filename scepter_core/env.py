"""`we`: the work environment of this process (rank, world, device, seed).

The bottom of the process layers: env <- dist (process group, collectives) <- parallel
(DDP/FSDP wrapping) <- launch (starting workers). Nothing here imports another core module."""
from __future__ import annotations

import os
import random

import numpy as np
import torch

# Scepter's own Python stream (caption dropout): seeded with the global ones and checkpointed
# in their place. Another thread of the process (a web server's, a library's) may draw from
# `random`'s global stream at any moment, and would then change a training run.
PY_RNG = random.Random()


class WorkEnv:
    """Process-wide facts. Ranks come from the launcher's environment variables."""

    def __init__(self) -> None:
        self.seed: int = 2023
        self._device_override: str | None = None

    # ---- ranks -------------------------------------------------------------------
    @property
    def rank(self) -> int:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank()
        return int(os.environ.get('RANK', 0)) if self.is_distributed else 0

    @property
    def world_size(self) -> int:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_world_size()
        return 1

    @property
    def local_rank(self) -> int:
        return int(os.environ.get('LOCAL_RANK', 0)) if self.is_distributed else 0

    @property
    def is_distributed(self) -> bool:
        return torch.distributed.is_available() and torch.distributed.is_initialized()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ---- device --------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        if self._device_override:
            return torch.device(self._device_override)
        if torch.cuda.is_available():
            return torch.device('cuda', self.local_rank % max(torch.cuda.device_count(), 1))
        if getattr(torch.backends, 'mps', None) and torch.backends.mps.is_available():
            return torch.device('mps')
        return torch.device('cpu')

    @property
    def device_id(self) -> int | str:
        """What Scepter code passes to `.to()` and `torch.Generator(device=...)`:
        the GPU index under CUDA, otherwise 'mps' or 'cpu'."""
        dev = self.device
        return dev.index if dev.type == 'cuda' else dev.type

    def set_device(self, device: str | None) -> None:
        """Force a device ('cpu', 'cuda:1', ...); None returns to auto-detection."""
        self._device_override = device

    # ---- seeds ---------------------------------------------------------------------
    def seed_all(self, seed: int | None = None, per_rank: bool = True) -> int:
        """Seed python, numpy and torch; each rank gets seed + rank unless per_rank=False."""
        self.seed = self.seed if seed is None else int(seed)
        s = self.seed + (self.rank if per_rank else 0)
        random.seed(s)
        PY_RNG.seed(s)  # the same stream `random.seed(s)` gives, kept to ourselves
        np.random.seed(s % (2 ** 32))
        torch.manual_seed(s)
        return s

    def __repr__(self) -> str:
        return (f'WorkEnv(rank={self.rank}, local_rank={self.local_rank}, world_size={self.world_size}, '
                f'device={self.device}, seed={self.seed})')


we = WorkEnv()

"""Wrapping a model for data parallelism (DDP, or FSDP with SOLVER.USE_FSDP) inside an
existing process group. Above dist.py and fsdp.py; the solver calls it, launch.py does not."""
from __future__ import annotations

import logging

import torch

from .config import Config
from .env import we


def wrap_distributed(model: torch.nn.Module, cfg: Config, logger: logging.Logger) -> torch.nn.Module:
    """DDP (or FSDP with USE_FSDP) around a model that has trainable parameters."""
    if cfg.get('USE_FSDP'):
        from .fsdp import wrap_fsdp
        return wrap_fsdp(model, cfg, logger)
    from torch.nn.parallel import DistributedDataParallel as DDP
    ids = [we.device.index] if we.device.type == 'cuda' else None
    # gradients as views of DDP's buckets: no copy, and no layout warnings for channels-last grads
    return DDP(model, device_ids=ids, gradient_as_bucket_view=True)

"""LR_SCHEDULERS: warmup then constant, linear or cosine decay, as torch LambdaLR.

`LR_SCHEDULERS.build(cfg, optimizer=opt, total_steps=N)` returns the torch scheduler."""
from __future__ import annotations

import logging
import math
from typing import Callable

import torch

from ..base import Configurable
from ..config import Config
from ..registry import prepare_config
from ..registry import LR_SCHEDULERS


class WarmupSchedule(Configurable):
    """Base: linear warmup over WARMUP_STEPS, then `decay(progress in [0,1])`."""

    para_dict = {
        'WARMUP_STEPS': {'value': 0, 'description': 'Steps of linear warmup from 0 to the base LR.'},
        'MIN_LR_RATIO': {'value': 0.0, 'description': 'Final LR as a fraction of the base LR.'},
        'TOTAL_STEPS': {'value': None, 'type': int, 'description': 'Steps to decay over; the solver MAX_STEPS when unset.'},
    }

    @staticmethod
    def decay(progress: float) -> float:
        return 1.0

    @classmethod
    def factor(cls, cfg: Config, total_steps: int) -> Callable[[int], float]:
        warm, floor = int(cfg.WARMUP_STEPS), float(cfg.MIN_LR_RATIO)
        total = int(cfg.TOTAL_STEPS or total_steps or 1)

        def f(step: int) -> float:
            if warm and step < warm:
                return (step + 1) / warm
            progress = min(max(step - warm, 0) / max(total - warm, 1), 1.0)
            return floor + (1.0 - floor) * cls.decay(progress)
        return f

    def __new__(cls, cfg: Config | dict, logger: logging.Logger | None = None,
                optimizer: torch.optim.Optimizer | None = None, total_steps: int = 0):
        cfg = prepare_config(cls, cfg if isinstance(cfg, Config) else Config(cfg))
        return torch.optim.lr_scheduler.LambdaLR(optimizer, cls.factor(cfg, total_steps))


@LR_SCHEDULERS.register_class(aliases=('ConstantLR',))
class constant(WarmupSchedule):
    """Warmup, then the base learning rate."""


@LR_SCHEDULERS.register_class(aliases=('LinearLR',))
class linear(WarmupSchedule):
    """Warmup, then linear decay to MIN_LR_RATIO."""

    @staticmethod
    def decay(progress: float) -> float:
        return 1.0 - progress


@LR_SCHEDULERS.register_class(aliases=('CosineLR', 'CosineAnnealingLR'))
class cosine(WarmupSchedule):
    """Warmup, then half-cosine decay to MIN_LR_RATIO."""

    @staticmethod
    def decay(progress: float) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * progress))

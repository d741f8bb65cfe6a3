"""Bases of every registered network: `Class(cfg, logger=None)` on an nn.Module."""
from __future__ import annotations

import functools
import logging
from typing import Any, Callable

import torch
from torch import nn

from ..base import Configurable
from ..config import Config


class TrainModule(nn.Module, Configurable):
    """An nn.Module built from a config block. Subclasses call
    `super().__init__(cfg, logger=logger)` first, then read `self.cfg`."""

    def __init__(self, cfg: Config | dict | None = None, logger: logging.Logger | None = None):
        nn.Module.__init__(self)
        self._init_config(cfg, logger)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.training:
            return self.forward_train(*args, **kwargs)
        return self.forward_test(*args, **kwargs)

    def forward_train(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f'{type(self).__name__} does not implement forward_train')

    def forward_test(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f'{type(self).__name__} does not implement forward_test')

    def freeze(self) -> None:
        """Eval mode and no gradients for every parameter; stays in eval mode even when
        a parent calls `.train()` (so dropout and norm statistics never change)."""
        self._frozen = True
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> 'TrainModule':
        return super().train(mode and not getattr(self, '_frozen', False))

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


def weights_constant(method: Callable) -> Callable:
    """Run `method` inside `self.constant_weights()` when the model has that attribute (the CPU
    fast paths attach one after build: convolution weights may be packed while it is open)."""
    @functools.wraps(method)
    def run(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        scope = getattr(self, 'constant_weights', None)
        if scope is None:
            return method(self, *args, **kwargs)
        with scope():
            return method(self, *args, **kwargs)
    return run


class BaseModel(TrainModule):
    """Scepter's name for a network with forward_train / forward_test."""


def device_autocast(device: torch.device | str, dtype: torch.dtype | None, enabled: bool = True):
    """Autocast for whatever device the tensors live on; a no-op for fp32 or when disabled."""
    dev = torch.device(device).type
    if dtype is None or dtype == torch.float32 or not enabled:
        return torch.autocast(device_type=dev, enabled=False)
    return torch.autocast(device_type=dev, dtype=dtype)

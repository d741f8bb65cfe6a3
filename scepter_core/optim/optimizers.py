"""OPTIMIZERS: torch optimizers with Scepter's keys.

`OPTIMIZERS.build(cfg, parameters=params)` returns the torch optimizer itself, as in
Scepter; the registered class only declares and translates the keys."""
from __future__ import annotations

import logging
from typing import Any, Iterable

import torch

from ..base import Configurable
from ..config import Config
from ..registry import prepare_config
from ..registry import OPTIMIZERS
from .lean_adam import LeanAdam, LeanAdamW


class TorchOptimizer(Configurable):
    """Base: build `torch_cls(parameters, **kwargs)` from declared keys."""

    torch_cls: type = torch.optim.SGD
    para_dict = {
        'LEARNING_RATE': {'value': 1e-4, 'min': 0, 'description': 'Base learning rate.'},
        'WEIGHT_DECAY': {'value': 0.0, 'description': 'Decoupled (AdamW) or L2 weight decay.'},
        'FOREACH': {'value': None, 'type': bool, 'description': 'Multi-tensor implementation; auto when unset.'},
    }

    @classmethod
    def torch_kwargs(cls, cfg: Config) -> dict[str, Any]:
        kw = {'lr': cfg.LEARNING_RATE, 'weight_decay': cfg.WEIGHT_DECAY}
        if cfg.FOREACH is not None:
            kw['foreach'] = cfg.FOREACH
        return kw

    def __new__(cls, cfg: Config | dict, logger: logging.Logger | None = None,
                parameters: Iterable | None = None) -> torch.optim.Optimizer:
        cfg = prepare_config(cls, cfg if isinstance(cfg, Config) else Config(cfg))
        params = list(parameters or [])
        if not params:
            raise ValueError('the optimizer got no trainable parameters (check FREEZE / TRAIN_MODULES / TUNER)')
        return cls.torch_cls(params, **cls.torch_kwargs(cfg))


class _AdamFamily(TorchOptimizer):
    para_dict = {
        'BETAS': {'value': [0.9, 0.999], 'description': 'Adam betas.'},
        'EPS': {'value': 1e-8, 'description': 'Adam epsilon.'},
        'AMSGRAD': {'value': False, 'description': 'Use the AMSGrad variant.'},
        'FUSED': {'value': None, 'type': bool,
                  'description': 'Fused kernel; auto: fused on CUDA and CPU parameters (fastest), else torch default.'},
    }

    @classmethod
    def torch_kwargs(cls, cfg: Config) -> dict[str, Any]:
        kw = super().torch_kwargs(cfg)
        kw.update(betas=tuple(cfg.BETAS), eps=cfg.EPS, amsgrad=cfg.AMSGRAD)
        if cfg.FUSED is not None:
            kw['fused'] = cfg.FUSED
            kw.pop('foreach', None)
        return kw

    def __new__(cls, cfg, logger=None, parameters=None):
        params = list(parameters or [])
        cfg = prepare_config(cls, cfg if isinstance(cfg, Config) else Config(cfg))
        if cfg.FUSED is None and cfg.FOREACH is None and params:
            first = params[0]['params'][0] if isinstance(params[0], dict) else params[0]
            # Fused Adam(W) is the fastest path on GPUs and on CPUs (torch >= 2.4 has a CPU kernel,
            # several times faster than the per-tensor loop torch picks for CPU by default).
            if first.device.type in ('cuda', 'cpu'):
                cfg.FUSED = True
        return super().__new__(cls, cfg, logger, params)


@OPTIMIZERS.register_class()
class AdamW(_AdamFamily):
    """torch.optim.AdamW (decoupled weight decay); fused, with a leaner step (lean_adam.py)."""
    torch_cls = LeanAdamW
    para_dict = {'WEIGHT_DECAY': {'value': 1e-2, 'description': 'Decoupled weight decay.'}}


@OPTIMIZERS.register_class()
class Adam(_AdamFamily):
    """torch.optim.Adam; fused, with a leaner step (lean_adam.py)."""
    torch_cls = LeanAdam


@OPTIMIZERS.register_class()
class SGD(TorchOptimizer):
    """torch.optim.SGD with momentum."""
    torch_cls = torch.optim.SGD
    para_dict = {
        'MOMENTUM': {'value': 0.9, 'description': 'Momentum factor.'},
        'NESTEROV': {'value': False, 'description': 'Nesterov momentum.'},
    }

    @classmethod
    def torch_kwargs(cls, cfg: Config) -> dict[str, Any]:
        return {**super().torch_kwargs(cfg), 'momentum': cfg.MOMENTUM, 'nesterov': cfg.NESTEROV}

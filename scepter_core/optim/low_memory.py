"""Optimizers that hold less state, for fitting large fine-tunes on one GPU:
AdamW8bit (torchao: 8-bit blockwise moments, ~2 bytes per parameter instead of 8) and
Adafactor (factored second moments; torch's own, torch >= 2.5)."""
from __future__ import annotations

from typing import Any

import torch

from ..config import Config
from ..errors import ConfigError
from ..registry import OPTIMIZERS
from .optimizers import TorchOptimizer


def _torchao_adamw8bit() -> type:
    try:
        from torchao.optim import AdamW8bit as cls
    except ImportError as e:
        raise ConfigError("OPTIMIZER AdamW8bit needs torchao: pip install 'scepter-forge[lowmem]'") from e
    return cls


@OPTIMIZERS.register_class()
class AdamW8bit(TorchOptimizer):
    """torchao's AdamW8bit: the two moments quantised to 8 bits in blocks of BLOCK_SIZE."""

    para_dict = {
        'BETAS': {'value': [0.9, 0.999], 'description': 'Adam betas.'},
        'EPS': {'value': 1e-8, 'description': 'Adam epsilon.'},
        'WEIGHT_DECAY': {'value': 1e-2, 'description': 'Decoupled weight decay.'},
        'BLOCK_SIZE': {'value': 256, 'description': 'Elements per quantisation block of the moments.'},
        'AMSGRAD': {'value': False, 'description': 'Use the AMSGrad variant.'},
    }

    @classmethod
    def torch_kwargs(cls, cfg: Config) -> dict[str, Any]:
        return {'lr': cfg.LEARNING_RATE, 'weight_decay': cfg.WEIGHT_DECAY, 'betas': tuple(cfg.BETAS),
                'eps': cfg.EPS, 'block_size': cfg.BLOCK_SIZE, 'amsgrad': cfg.AMSGRAD}

    def __new__(cls, cfg, logger=None, parameters=None):
        cls.torch_cls = _torchao_adamw8bit()
        return super().__new__(cls, cfg, logger, parameters)


@OPTIMIZERS.register_class()
class Adafactor(TorchOptimizer):
    """torch.optim.Adafactor (Shazeer & Stern 2018): row and column second moments only."""

    para_dict = {
        'LEARNING_RATE': {'value': 1e-2, 'min': 0, 'description': 'Base learning rate (Adafactor uses larger ones).'},
        'BETA2_DECAY': {'value': -0.8, 'description': 'Decay rate of the second-moment average.'},
        'EPS': {'value': [None, 1e-3], 'description': '[eps1, eps2]: regularisers of the moments and the update.'},
        'D': {'value': 1.0, 'description': 'Update clipping threshold.'},
        'MAXIMIZE': {'value': False, 'description': 'Maximise the objective instead.'},
    }

    @classmethod
    def torch_kwargs(cls, cfg: Config) -> dict[str, Any]:
        return {'lr': cfg.LEARNING_RATE, 'beta2_decay': cfg.BETA2_DECAY, 'eps': tuple(cfg.EPS), 'd': cfg.D,
                'weight_decay': cfg.WEIGHT_DECAY, 'maximize': cfg.MAXIMIZE}

    def __new__(cls, cfg, logger=None, parameters=None):
        if not hasattr(torch.optim, 'Adafactor'):
            raise ConfigError(f'OPTIMIZER Adafactor needs torch >= 2.5 (this is {torch.__version__})')
        cls.torch_cls = torch.optim.Adafactor
        return super().__new__(cls, cfg, logger, parameters)

"""Base of condition embedders."""
from __future__ import annotations

import logging
from typing import Any

import torch

from ...config import Config
from ..base import TrainModule


class BaseEmbedder(TrainModule):
    """An embedder turns conditions (token ids, text, sizes) into tensors for the backbone.
    The last four keys are Scepter's per-embedder settings inside a GeneralConditioner's
    EMBEDDERS list; an embedder used on its own ignores them."""

    para_dict = {
        'USE_GRAD': {'value': False, 'description': 'Compute gradients through the embedder.'},
        'FREEZE': {'value': True, 'description': 'Freeze all weights (eval mode, no grad).'},
        'IS_TRAINABLE': {'value': False, 'description': 'In a GeneralConditioner: train this embedder '
                                                        '(unfrozen, with gradients) whatever FREEZE says.'},
        'UCG_RATE': {'value': 0.0, 'type': float, 'description': 'In a GeneralConditioner: probability, per '
                                                                 'training sample, of dropping this condition.'},
        'INPUT_KEYS': {'value': [], 'type': list, 'description': "In a GeneralConditioner: the batch keys this "
                                                                 "embedder reads, e.g. ['prompt']."},
        'LEGACY_UCG_VALUE': {'value': None, 'description': 'In a GeneralConditioner: drop a condition by '
                                                           'replacing its input with this value (e.g. an empty '
                                                           'prompt) instead of zeroing its embedding.'},
    }

    def __init__(self, cfg: Config | dict | None = None, logger: logging.Logger | None = None):
        super().__init__(cfg, logger=logger)
        # Scepter's attribute names, which its GeneralConditioner reads and writes.
        self.is_trainable: bool = self.cfg.IS_TRAINABLE
        self.ucg_rate: float = float(self.cfg.UCG_RATE or 0.0)
        self.input_keys: list[str] = list(self.cfg.INPUT_KEYS or [])
        self.legacy_ucg_val: Any = self.cfg.LEGACY_UCG_VALUE

    def encode(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        raise NotImplementedError

    def encode_text(self, tokens: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        raise NotImplementedError

"""Base of condition embedders."""
from __future__ import annotations

from typing import Any

import torch

from ..base import TrainModule


class BaseEmbedder(TrainModule):
    """An embedder turns conditions (token ids, text) into tensors for the backbone."""

    para_dict = {
        'USE_GRAD': {'value': False, 'description': 'Compute gradients through the embedder.'},
        'FREEZE': {'value': True, 'description': 'Freeze all weights (eval mode, no grad).'},
    }

    def encode(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        raise NotImplementedError

    def encode_text(self, tokens: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        raise NotImplementedError

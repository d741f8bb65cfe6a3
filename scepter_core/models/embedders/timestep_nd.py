"""ConcatTimestepEmbedderND: SDXL's size/crop micro-conditioning (`add_time_ids`)."""
from __future__ import annotations

import logging
from typing import Any

import torch

from ...config import Config
from ...errors import ConfigError
from ...registry import EMBEDDERS
from ..backbones.unet_blocks import TimestepEmbedding
from .base import BaseEmbedder


@EMBEDDERS.register_class()
class ConcatTimestepEmbedderND(BaseEmbedder):
    """Values [B, d] (or [B]) -> [B, d * OUT_DIM]: each value's sinusoidal timestep features
    ([cos | sin], LDM convention), concatenated in order. For [height, width] pairs with
    OUT_DIM 256 this is diffusers' `add_time_proj` of the same ids. No parameters."""

    para_dict = {'OUT_DIM': {'value': 256, 'description': 'Features per value.'}}

    def __init__(self, cfg: Config | dict | None = None, logger: logging.Logger | None = None):
        super().__init__(cfg, logger=logger)
        if self.cfg.OUT_DIM <= 0:
            raise ConfigError(f"'{self.cfg.path or 'ConcatTimestepEmbedderND'}.OUT_DIM': expected a positive "
                              f'int, got {self.cfg.OUT_DIM}')
        self.outdim: int = self.cfg.OUT_DIM
        self.timestep = TimestepEmbedding(self.outdim)

    def forward(self, x: Any) -> torch.Tensor:
        x = torch.as_tensor(x)
        x = x[:, None] if x.dim() == 1 else x
        if x.dim() != 2:
            raise ConfigError(f'ConcatTimestepEmbedderND: expected values [B, d] or [B], got shape {tuple(x.shape)}')
        b, d = x.shape
        return self.timestep(x.reshape(-1), b * d, x.device).reshape(b, d * self.outdim)

    def encode(self, x: Any) -> torch.Tensor:
        return self(x)

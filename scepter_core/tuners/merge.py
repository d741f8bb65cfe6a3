"""Merging adapters into the base weights (`scepter convert --merge-lora`)."""
from __future__ import annotations

import logging

from torch import nn

from ..base import get_logger
from .apply import RECORD_ATTR, lora_layers


def merge_lora(model: nn.Module, logger: logging.Logger | None = None) -> nn.Module:
    """Fold every active adapter into its layer's weight (peft's merge, at each adapter's
    current scale) and put the plain layers back: the model computes the same outputs
    without peft. Returns `model` (changed in place)."""
    logger = logger or get_logger()
    layers = lora_layers(model)
    for name, layer in layers.items():
        layer.merge(safe_merge=True, adapter_names=list(layer.active_adapters))
        parent, _, child = name.rpartition('.')
        setattr(model.get_submodule(parent) if parent else model, child, layer.get_base_layer())
    model.__dict__.pop(RECORD_ATTR, None)
    if layers:
        logger.info(f'merged adapters into {len(layers)} layers')
    return model

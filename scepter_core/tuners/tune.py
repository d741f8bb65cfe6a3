"""SOLVER.TUNER: inject the adapters its blocks describe (or load trained adapter files),
then freeze every other parameter. Above apply.py (adapters in a model) and files.py."""
from __future__ import annotations

import logging
import os

from torch import nn

from ..base import get_logger
from ..config import Config
from ..registry import TUNERS
from .apply import free_adapter_name, record_of, settle, sync_ema_copy
from .files import load_adapter
from .state import EMA_PREFIX


def _bias_keys(model: nn.Module, modules: list[str], bias: str) -> set[str]:
    """Biases that train with BIAS lora_only (those of adapted layers) or all (peft: every bias)."""
    if bias == 'lora_only':
        params = dict(model.named_parameters())
        return {f'{m}.base_layer.bias' for m in modules if f'{m}.base_layer.bias' in params}
    if bias == 'all':
        return {n for n, _ in model.named_parameters() if n.endswith('.bias') and not n.startswith(EMA_PREFIX)}
    return set()


def _warn_without_grad(model: nn.Module, logger: logging.Logger) -> None:
    """Adapters inside an embedder that computes no gradients (USE_GRAD false) never train."""
    for child_name, child in model.named_children():
        cfg = getattr(child, 'cfg', None)
        if cfg is None or 'USE_GRAD' not in cfg or cfg.USE_GRAD:
            continue
        if any(p.requires_grad for p in child.parameters()):
            logger.warning(f'{child_name} has trainable adapters but computes no gradients: set '
                           f'{child_name.upper()}.USE_GRAD: true in the MODEL block, or they stay at init')


def apply_tuners(model: nn.Module, tuner_cfg: list | Config | dict | str,
                 logger: logging.Logger | None = None) -> nn.Module:
    """Inject the adapters SOLVER.TUNER describes (a list of TUNERS blocks, one block, or the
    path of a trained adapter) and freeze every other parameter. Returns `model` (changed in place)."""
    logger = logger or get_logger()
    items = list(tuner_cfg) if isinstance(tuner_cfg, (list, tuple)) else [tuner_cfg]
    if not any(items):
        return model
    record = record_of(model)
    for item in items:
        if isinstance(item, (str, os.PathLike)):
            load_adapter(model, str(item), trainable=True, logger=logger)
            continue
        tuner = TUNERS.build(item, logger=logger)
        name = free_adapter_name(model)
        modules = tuner.inject(model, name)
        record.configs[name] = tuner.to_dict()
        record.trainable.add(name)
        record.bias_keys |= _bias_keys(model, modules, tuner.cfg.BIAS or 'none')
        logger.info(f'{type(tuner).__name__} adapter {name}: rank {tuner.cfg.R} on {len(modules)} modules '
                    f'(e.g. {modules[0]})')
    settle(model)
    sync_ema_copy(model)
    _warn_without_grad(model, logger)
    return model

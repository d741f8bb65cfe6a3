"""`apply`: the CPU fast paths switched into a built model, under one switch, logged once.

Models are built from plain torch layers. `apply` then swaps classes in place (layers.py,
attention.py) and makes the UNet and the VAE's coders run channels_last with packed weights
while weights are constant (packing.py). Off with SOLVER.CPU_FAST_PATHS: false or
SCEPTER_CPU_FAST_PATHS=0, and for a model that is not on the CPU: the model keeps stock torch
layers. Each layer still checks per call that its path applies (fp32, no autocast, not
compiling) and otherwise runs the stock forward."""
from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..models.autoencoders.coders import Decoder, Encoder
from ..models.backbones.unet import DiffusionUNet
from . import gemm, packing
from .attention import ATTENTION_SWAPS
from .layers import SWAPS, swap_classes

ENV = 'SCEPTER_CPU_FAST_PATHS'
MODES = ('train', 'infer')
# Built parts that run channels_last inside the constant-weights scope: their forward takes the
# image or latent first and nothing in them views a map as if it were NCHW-contiguous.
LAYOUT_ROOTS: tuple[type, ...] = (DiffusionUNet, Encoder, Decoder)
_LOGGED: set[str] = set()


def disabled_reason(cfg: Any = None) -> str | None:
    """Why the fast paths are off by configuration (None when on): the environment variable
    first, then SOLVER.CPU_FAST_PATHS of `cfg` (a SOLVER block, or None)."""
    raw = os.environ.get(ENV, '').strip().lower()
    if raw in ('0', 'false', 'off', 'no'):
        return f'{ENV}={raw}'
    if raw not in ('', '1', 'true', 'on', 'yes'):
        raise ConfigError(f'{ENV}={raw!r}: expected 1 (on) or 0 (off)')
    value = cfg.get('CPU_FAST_PATHS') if cfg is not None else None
    if value is not None and not value:
        return 'SOLVER.CPU_FAST_PATHS: false'
    return None


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device('cpu')


def describe(mode: str) -> str:
    """The paths taken in this process, as the one log line says them."""
    on, off = [], []
    value = gemm.choice()
    if value == 'auto':
        speedup, need = gemm.probe_speedup(torch.get_num_threads()), gemm.MIN_SPEEDUP
        why = f'probe {speedup:.2f}x' + ('' if speedup >= need else f' < {need}x')
    else:
        why = f'{gemm.ENV}={value}'
    onednn = gemm.backend() == 'onednn'
    (on if onednn else off).append(f'onednn linear and wide convs as matmuls ({why})')
    limit = packing.pack_limit_bytes() / 2 ** 20
    if limit > 0 and packing.can_pack():
        on.append(f'packed conv weights up to {limit:g} MB and channels_last while sampling')
    else:
        off.append(f'packed conv weights ({packing.PACK_ENV}=0)' if limit <= 0 else
                   'packed conv weights (not in this torch)')
    on.append('short attention as matmuls, half-precision attention in fp32')
    if mode == 'train':
        (on if onednn else off).append('fused attention in training' + ('' if onednn else ' (needs onednn linear)'))
    return 'cpu fast paths: ' + ', '.join(on) + (f'; off: {", ".join(off)}' if off else '')


def log_once(logger: logging.Logger, line: str) -> None:
    if line not in _LOGGED:
        _LOGGED.add(line)
        logger.info(line)


def apply(model: nn.Module, mode: str = 'train', cfg: Any = None,
          logger: logging.Logger | None = None) -> nn.Module:
    """Switch the CPU fast paths into `model` in place (module doc) and log once which ones.
    `mode`: 'train' or 'infer' (what the model is for: the log lists the training paths for
    'train'); `cfg`: the SOLVER block (CPU_FAST_PATHS) or None. Returns `model`."""
    if mode not in MODES:
        raise ValueError(f"accel.apply: mode {mode!r} is not one of {', '.join(MODES)}")
    logger = logger or logging.getLogger('scepter')
    reason = disabled_reason(cfg)
    device = _device(model)
    if reason is None and device.type != 'cpu':
        reason = f'the model is on {device.type}'
    if reason is not None:
        log_once(logger, f'cpu fast paths: off ({reason})')
        return model
    swap_classes(model, SWAPS)
    swap_classes(model, ATTENTION_SWAPS)
    for m in model.modules():
        if isinstance(m, LAYOUT_ROOTS):
            packing.attach_layout_hooks(m)
    model.constant_weights = packing.packed_weights  # for the network's own sampling entry points
    log_once(logger, describe(mode))
    return model

"""Putting adapters into a network and reading them back: the calls the solver makes
(`tuner_state_dict`, `is_tuned`) and loading a `LoraState` into a model."""
from __future__ import annotations

import copy
import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..base import get_logger
from ..errors import CheckpointError
from .lora import LoRA
from .state import ADAPTER_KEY, EMA_PREFIX, LoraState, adapter_entries, block_for, is_adapter_key, split_state

RECORD_ATTR = '_scepter_tuners'


@dataclass
class TunerRecord:
    """What a tuned model remembers about its adapters (for saving them with their configs)."""

    configs: dict[str, dict[str, Any]] = field(default_factory=dict)   # adapter -> LoRA block
    trainable: set[str] = field(default_factory=set)
    bias_keys: set[str] = field(default_factory=set)                   # biases trained beside the adapters
    base_hash: str = ''


def lora_layers(model: nn.Module) -> dict[str, Any]:
    """name -> peft LoraLayer of every adapted module."""
    from peft.tuners.lora import LoraLayer
    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer)}


def adapter_names(model: nn.Module) -> list[str]:
    names: dict[str, None] = {}
    for layer in lora_layers(model).values():
        names.update(dict.fromkeys(layer.lora_A))
    return list(names)


def is_tuned(model: nn.Module) -> bool:
    """True if `model` holds any (unmerged) adapter."""
    return bool(lora_layers(model))


def base_model_hash(model: nn.Module) -> str:
    """A fingerprint of the base weights (names, shapes and a strided sample of values of every
    non-adapter tensor but the EMA copy), cheap enough for SD-sized models; unchanged by adapter
    injection."""
    h = hashlib.sha256()
    for key, t in sorted(model.state_dict().items()):
        if is_adapter_key(key) or t.is_meta or key.startswith(EMA_PREFIX):
            continue
        h.update(key.replace('.base_layer.', '.').encode())
        h.update(str(tuple(t.shape)).encode())
        t = t.detach()
        if type(t) is not torch.Tensor and hasattr(t, 'dequantize'):  # a quantized base (torchao)
            t = t.dequantize()
        flat = t.reshape(-1)
        sample = flat[::max(1, flat.numel() // 1024)][:1024]
        h.update(sample.to('cpu', torch.float32).numpy().tobytes())
    return h.hexdigest()[:16]


def record_of(model: nn.Module) -> TunerRecord:
    """The model's tuner record, created (with the base-weight hash) on first use."""
    record = model.__dict__.get(RECORD_ATTR)
    if record is None:
        record = TunerRecord(base_hash=base_model_hash(model))
        model.__dict__[RECORD_ATTR] = record
    return record


def free_adapter_name(model: nn.Module, preferred: str | None = None) -> str:
    taken = set(adapter_names(model)) | set(record_of(model).configs)
    if preferred and preferred not in taken:
        return preferred
    n = 0
    while f'lora{n}' in taken:
        n += 1
    return f'lora{n}'


def settle(model: nn.Module) -> None:
    """Every adapter of every layer active; only trainable adapters (and their biases) have
    gradients, every other parameter (the EMA copy's adapters too) is frozen."""
    record = record_of(model)
    for layer in lora_layers(model).values():
        layer.set_adapter(list(layer.lora_A))
    for name, p in model.named_parameters():
        m = ADAPTER_KEY.match(name)
        trains = bool(m and m['adapter'] in record.trainable) or name in record.bias_keys
        p.requires_grad_(trains and not name.startswith(EMA_PREFIX))


def _adapter_keys(module: nn.Module) -> set[str]:
    return {k for k in module.state_dict() if is_adapter_key(k)}


def sync_ema_copy(model: nn.Module) -> None:
    """With an EMA copy of the UNet (`model.model_ema`, USE_EMA), rebuild that copy from the
    tuned UNet, adapters included: the EMA then averages what trains (the adapters; the
    frozen base stays the base), and sampling with the EMA copy uses them. Adapter values the
    copy already holds are kept; nothing happens when it already has every adapter."""
    unet, ema = getattr(model, 'model', None), getattr(model, 'model_ema', None)
    if not isinstance(unet, nn.Module) or not isinstance(ema, nn.Module) or not is_tuned(unet):
        return
    if _adapter_keys(unet) == _adapter_keys(ema):
        return
    kept = {k: v.detach().clone() for k, v in ema.state_dict().items() if is_adapter_key(k)}
    model.model_ema = None  # free the old copy before making the new one
    fresh = copy.deepcopy(unet).requires_grad_(False).eval()
    fresh.load_state_dict(kept, strict=False)
    model.model_ema = fresh


def tuner_state_dict(model: nn.Module, ema: bool = False) -> dict[str, torch.Tensor]:
    """Adapter weights (and biases trained with them), named as in `model.state_dict()`;
    with `ema`, also the EMA copy's adapters (`model_ema.*`, see `sync_ema_copy`)."""
    bias_keys = record_of(model).bias_keys
    return {k: v for k, v in model.state_dict().items()
            if (is_adapter_key(k) or k in bias_keys) and (ema or not k.startswith(EMA_PREFIX))}


def adapter_configs(model: nn.Module) -> dict[str, dict[str, Any]]:
    """adapter -> its LoRA block (from the record, or read off the layers)."""
    record = record_of(model)
    configs = {}
    for adapter in adapter_names(model):
        if adapter in record.configs:
            configs[adapter] = record.configs[adapter]
            continue
        layer = next(layer for layer in lora_layers(model).values() if adapter in layer.lora_A)
        configs[adapter] = {'NAME': 'LoRA', 'R': layer.r[adapter], 'LORA_ALPHA': layer.lora_alpha[adapter]}
    return configs


def model_lora_state(model: nn.Module) -> LoraState:
    """The model's adapters as a LoraState (with the EMA copy's adapters, if any, in `ema`)."""
    return split_state(tuner_state_dict(model, ema=True), adapter_configs(model), type(model).__name__)


def inject_state(model: nn.Module, state: LoraState, trainable: bool = False, scale: float = 1.0,
                 source: str = 'adapter', logger: logging.Logger | None = None) -> list[str]:
    """Add the adapters of `state` to `model` with their weights (each under a free name)
    and scale their updates by `scale`. Returns the adapter names used in the model."""
    logger = logger or get_logger()
    record = record_of(model)
    if state.metadata.get('base_hash') and state.metadata['base_hash'] != record.base_hash:
        logger.warning(f"{source}: trained on another base model (hash {state.metadata['base_hash']}, "
                       f'this one {record.base_hash}); applying it anyway')
    used: dict[str, str] = {}  # adapter in the file -> its name in the model
    for adapter in state.adapters():
        entries = adapter_entries(state, adapter)
        block = block_for(entries, state.configs[adapter])
        block['INIT_LORA_WEIGHTS'] = True  # the file's weights replace the init; never touch base weights
        name = free_adapter_name(model, adapter)
        injected = LoRA(block, logger=logger).inject(model, name)
        missing = sorted(set(entries) - set(injected))
        if missing:
            raise CheckpointError(f"{source}: the model has no adaptable module '{missing[0]}' "
                                  f'({len(missing)} of {len(entries)} modules missing)')
        _load_exact(model, _renamed(state.tensors, adapter, name), source)
        for layer in lora_layers(model).values():
            layer.set_scale(name, scale)
        record.configs[name] = dict(state.configs[adapter])
        if trainable:
            record.trainable.add(name)
        used[adapter] = name
        logger.info(f'{source}: adapter {name} on {len(entries)} modules, scale {scale:g}')
    if state.extra:
        _load_exact(model, state.extra, source)
        if trainable:
            record.bias_keys |= set(state.extra)
    settle(model)
    sync_ema_copy(model)
    if state.ema and getattr(model, 'model_ema', None) is not None:  # a model without one samples without EMA
        for adapter, name in used.items():
            _load_exact(model, _renamed(state.ema, adapter, name), source)
    return list(used.values())


def _renamed(sd: dict[str, torch.Tensor], adapter: str, name: str) -> dict[str, torch.Tensor]:
    """The tensors of `adapter` in `sd`, renamed to adapter `name`."""
    suffix = f'.{adapter}.weight'
    return {k[:-len(suffix)] + f'.{name}.weight': v for k, v in sd.items() if k.endswith(suffix)}


def _load_exact(model: nn.Module, sd: dict[str, torch.Tensor], source: str) -> None:
    try:
        result = model.load_state_dict(sd, strict=False)
    except RuntimeError as e:
        raise CheckpointError(f'{source}: weights do not fit the model: {str(e).splitlines()[-1].strip()}') from e
    if result.unexpected_keys:
        raise CheckpointError(f"{source}: the model has no tensor '{result.unexpected_keys[0]}' "
                              f'({len(result.unexpected_keys)} unmatched)')


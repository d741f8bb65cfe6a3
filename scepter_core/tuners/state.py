"""Adapter weights as data: our grouped form (`LoraState`, keys as in the model's state dict,
one peft adapter per tuner block) and a flat, format-neutral form (module -> `ModuleLora`)
that the kohya and diffusers/peft formats are written from and read into."""
from __future__ import annotations

import copy
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import CheckpointError

# `<module>.lora_A.<adapter>.weight`: peft's parameter names inside our model.
ADAPTER_KEY = re.compile(r'^(?P<module>.+)\.(?P<part>lora_A|lora_B|lora_magnitude_vector)\.'
                         r'(?P<adapter>[^.]+)\.weight$')
PARTS = ('lora_A', 'lora_B', 'lora_magnitude_vector')
EMA_PREFIX = 'model_ema.'  # the EMA copy of the UNet (USE_EMA): its adapters average the trained ones


def is_adapter_key(key: str) -> bool:
    return ADAPTER_KEY.match(key) is not None


@dataclass
class ModuleLora:
    """One adapted module: output += (alpha / rank) * up @ down @ input (DoRA: then rescaled
    to `magnitude`)."""

    down: torch.Tensor                    # A: [rank, in] or [rank, in, kh, kw]
    up: torch.Tensor                      # B: [out, rank] or [out, rank, 1, 1]
    alpha: float
    magnitude: torch.Tensor | None = None

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])


@dataclass
class LoraState:
    """Adapters grouped as peft holds them: `tensors` keyed like the model's state dict
    (`<module>.lora_A.<adapter>.weight`, plus any trained biases in `extra`) and one
    LoRA block per adapter in `configs`; `ema`: the same adapters in a run's EMA copy of
    the UNet (`model_ema.<module>...`), if it had one."""

    tensors: dict[str, torch.Tensor]
    configs: dict[str, dict[str, Any]]
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    ema: dict[str, torch.Tensor] = field(default_factory=dict)

    def adapters(self) -> list[str]:
        return list(self.configs)

    def modules(self, adapter: str) -> list[str]:
        """Names of the modules adapter `adapter` adapts, in file order."""
        seen: dict[str, None] = {}
        for key in self.tensors:
            m = ADAPTER_KEY.match(key)
            if m and m['adapter'] == adapter:
                seen[m['module']] = None
        return list(seen)

    def part(self, module: str, part: str, adapter: str) -> torch.Tensor | None:
        return self.tensors.get(f'{module}.{part}.{adapter}.weight')

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**self.tensors, **self.extra, **self.ema}


def split_state(sd: dict[str, torch.Tensor], configs: dict[str, dict[str, Any]], source: str) -> LoraState:
    """A LoraState from a state dict of adapter tensors (and extras, and the EMA copy's
    adapters) and the adapters' blocks."""
    ema = {k: v for k, v in sd.items() if k.startswith(EMA_PREFIX) and is_adapter_key(k)}
    tensors = {k: v for k, v in sd.items() if is_adapter_key(k) and k not in ema}
    extra = {k: v for k, v in sd.items() if k not in tensors and k not in ema}
    found = {ADAPTER_KEY.match(k)['adapter'] for k in tensors}
    missing = sorted(found - set(configs))
    if missing:
        raise CheckpointError(f"'{source}': adapter {missing[0]!r} has weights but no LoRA config "
                              f'(known: {", ".join(configs) or "none"})')
    return LoraState(tensors, {a: c for a, c in configs.items() if a in found}, extra, ema=ema)


def module_alpha(cfg: dict[str, Any], module: str, rank: int) -> float:
    """The alpha that gives this module's scale as alpha / rank (rsLoRA folded in)."""
    alpha = cfg.get('LORA_ALPHA', rank)
    for pattern, value in (cfg.get('ALPHA_PATTERN') or {}).items():
        if re.match(rf'(.*\.)?({pattern})$', module):
            alpha = value
            break
    return float(alpha) * (math.sqrt(rank) if cfg.get('USE_RSLORA') else 1.0)


def adapter_entries(state: LoraState, adapter: str) -> dict[str, ModuleLora]:
    """module -> ModuleLora for one adapter of `state`."""
    cfg = state.configs[adapter]
    out: dict[str, ModuleLora] = {}
    for module in state.modules(adapter):
        down, up = state.part(module, 'lora_A', adapter), state.part(module, 'lora_B', adapter)
        if down is None or up is None:
            raise CheckpointError(f"adapter '{adapter}': module '{module}' lacks lora_A or lora_B")
        out[module] = ModuleLora(down, up, module_alpha(cfg, module, int(down.shape[0])),
                                 state.part(module, 'lora_magnitude_vector', adapter))
    return out


def flatten(state: LoraState) -> dict[str, ModuleLora]:
    """module -> ModuleLora over all adapters; two adapters on one module cannot be flattened."""
    flat: dict[str, ModuleLora] = {}
    for adapter in state.configs:
        for module, entry in adapter_entries(state, adapter).items():
            if module in flat:
                raise CheckpointError(f"module '{module}' holds more than one adapter; export or merge "
                                      f'them one at a time')
            flat[module] = entry
    return flat


def _most_common(values: list) -> Any:
    return Counter(values).most_common(1)[0][0]


def block_for(entries: dict[str, ModuleLora], base: dict[str, Any] | None = None) -> dict[str, Any]:
    """A LoRA block that reproduces `entries` exactly: the most common rank and alpha as
    R / LORA_ALPHA, every other module pinned by an exact-name RANK_PATTERN / ALPHA_PATTERN."""
    cfg = copy.deepcopy(base or {'NAME': 'LoRA'})
    rank = _most_common([e.rank for e in entries.values()])
    alpha = _most_common([e.alpha for e in entries.values()])
    alpha = int(alpha) if float(alpha).is_integer() else alpha
    cfg.update({'R': rank, 'LORA_ALPHA': alpha, 'USE_RSLORA': False,
                'TARGET_MODULES': list(entries),
                'USE_DORA': any(e.magnitude is not None for e in entries.values()),
                'RANK_PATTERN': {re.escape(m): e.rank for m, e in entries.items() if e.rank != rank},
                'ALPHA_PATTERN': {re.escape(m): e.alpha for m, e in entries.items() if e.alpha != alpha}})
    return cfg


def group(flat: dict[str, ModuleLora], prefixes: tuple[str, ...], base: dict[str, Any] | None = None) -> LoraState:
    """Flat modules -> a LoraState with one adapter per module-name prefix that has modules
    (`lora0`, `lora1`, ... in the order of `prefixes`, as `apply_tuners` names its blocks)."""
    by_prefix: dict[str, dict[str, ModuleLora]] = {p: {} for p in prefixes}
    for module, entry in flat.items():
        prefix = next((p for p in prefixes if module.startswith(p)), None)
        if prefix is None:
            raise CheckpointError(f"module '{module}' is outside {', '.join(prefixes)}")
        by_prefix[prefix][module] = entry
    tensors: dict[str, torch.Tensor] = {}
    configs = {}
    for entries in (e for e in by_prefix.values() if e):
        adapter = f'lora{len(configs)}'
        configs[adapter] = block_for(entries, base)
        for module, e in entries.items():
            tensors[f'{module}.lora_A.{adapter}.weight'] = e.down
            tensors[f'{module}.lora_B.{adapter}.weight'] = e.up
            if e.magnitude is not None:
                tensors[f'{module}.lora_magnitude_vector.{adapter}.weight'] = e.magnitude
    return LoraState(tensors, configs)

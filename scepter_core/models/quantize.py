"""Frozen weights held quantized (torchao): int8 weight-only on any device, fp8 weight-only
on CUDA GPUs that have fp8 (compute capability 8.9+). Only Linear layers none of whose
parameters train are quantized, so LoRA adapters (peft wraps torchao layers) and any
trained layer stay in full precision. Roughly 4x (int8) less memory for a frozen base."""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError

MODES = ('int8', 'fp8')


@dataclass
class QuantReport:
    layers: int
    bytes_before: int
    bytes_after: int

    def __str__(self) -> str:
        return (f'{self.layers} frozen linear layers held {self.bytes_before / 2**20:.1f} MiB -> '
                f'{self.bytes_after / 2**20:.1f} MiB')


@contextlib.contextmanager
def _quiet_torchao():
    """torchao logs every CUDA extension it cannot load at import; on a CPU that is noise."""
    loggers = [logging.getLogger(n) for n in ('torchao', 'torchao.utils', 'root')]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _config(mode: str, device: torch.device):
    if mode not in MODES:
        raise ConfigError(f"QUANTIZE: '{mode}' is not one of {', '.join(MODES)}")
    try:
        with _quiet_torchao():
            from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig
    except ImportError as e:
        raise ConfigError("QUANTIZE needs torchao: pip install 'scepter-forge[lowmem]'") from e
    if mode == 'fp8':
        if device.type != 'cuda' or torch.cuda.get_device_capability(device) < (8, 9):
            raise ConfigError(f'QUANTIZE fp8 needs a CUDA GPU with fp8 (compute capability 8.9+), not {device}; '
                              f'use int8')
        return Float8WeightOnlyConfig()
    return Int8WeightOnlyConfig()


def _bytes(module: nn.Module) -> int:
    total = 0
    for t in module.parameters(recurse=False):
        inner = [getattr(t, name) for name in getattr(t, '__tensor_flatten__', lambda: ([], None))()[0]]
        total += sum(x.numel() * x.element_size() for x in inner) if inner else t.numel() * t.element_size()
    return total


def quantize_frozen(model: nn.Module, mode: str, logger: logging.Logger | None = None) -> QuantReport:
    """Quantize in place every Linear whose parameters are all frozen; returns what changed."""
    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)
               and not any(p.requires_grad for p in m.parameters()) and not m.weight.is_meta]
    if not targets:
        return QuantReport(0, 0, 0)
    config = _config(mode, targets[0][1].weight.device)
    with _quiet_torchao():
        from torchao.quantization import quantize_
    before = sum(_bytes(m) for _, m in targets)
    chosen = {id(m) for _, m in targets}
    quantize_(model, config, filter_fn=lambda m, _: id(m) in chosen)
    for _, m in targets:  # torchao swaps the weight tensor; keep it out of the optimizer
        m.weight.requires_grad_(False)
    report = QuantReport(len(targets), before, sum(_bytes(m) for _, m in targets))
    if logger is not None:
        logger.info(f'QUANTIZE {mode}: {report}')
    return report


"""Packed convolution weights while weights are constant, and the channels_last layout they want.

Inside `packed_weights()`, with no gradient wanted, on fp32 CPU tensors, a convolution weight is
reordered once into oneDNN's blocked layout and reused, as inductor's weight freezing does;
eager torch reorders it at every call, which dominates wide convolutions on small feature maps
(1280 channels at 8x8: ~90 GFLOP/s eager, ~400 packed). The scope is what keeps this safe:
weights do not change while a sampler runs, whereas during training they change in ways no
counter sees (fused AdamW and `.data` writes leave `_version` as it was). The packed copies
cost memory, so only weights up to SCEPTER_CPU_PACK_LIMIT_MB each (default 4; 0 turns packing
off) are packed, and all are dropped when the outermost scope ends.

oneDNN answers a packed convolution in channels_last, so a network whose convolutions pack runs
channels_last throughout: `attach_layout_hooks` makes each built part that holds convolutions
(the UNet, the VAE's encoder and decoder) take its input channels_last inside the scope and
hand back NCHW, and gives it `constant_weights`, the scope that samplers enter (the models
never import this package; they look the attribute up)."""
from __future__ import annotations

import contextlib
import functools
import os
import threading
import weakref
from typing import Any, Iterator

import torch
from torch import nn

from .gemm import autocast_on

PACK_ENV, PACK_LIMIT_MB = 'SCEPTER_CPU_PACK_LIMIT_MB', 4.0


class _ThreadState(threading.local):
    """Per thread, as autocast and grad mode are: a sampler running in one thread (the Studio's)
    must not make another thread's training see constant weights and take other kernels."""

    def __init__(self) -> None:
        self.scopes = 0
        # module -> (key, weight ref, packed weight); outside the module so copies and pickles
        # never carry it. Filled only inside packed_weights().
        self.packed: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.relaid: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> stack of bools


_THREAD = _ThreadState()


def packs() -> weakref.WeakKeyDictionary:
    """This thread's packed weights (module -> (key, weight ref, packed weight))."""
    return _THREAD.packed


@contextlib.contextmanager
def packed_weights() -> Iterator[None]:
    """Within this scope (in this thread) convolution weights count as constant and may be packed
    (module doc); usable as a decorator. Nested scopes share the packs; the outermost one drops them."""
    _THREAD.scopes += 1
    try:
        yield
    finally:
        _THREAD.scopes -= 1
        if not _THREAD.scopes:
            _THREAD.packed.clear()


def in_scope() -> bool:
    return _THREAD.scopes > 0


def pack_limit_bytes() -> float:
    raw = os.environ.get(PACK_ENV, '').strip()
    try:
        return float(raw or PACK_LIMIT_MB) * 2 ** 20
    except ValueError:
        raise ValueError(f'{PACK_ENV}={raw!r}: expected a number of MB (0 turns packing off)') from None


@functools.lru_cache(maxsize=None)
def can_pack() -> bool:
    """oneDNN's packed convolution exists in this torch and gives the eager numbers."""
    try:
        from torch.utils._python_dispatch import _disable_current_modes
        with torch.random.fork_rng(devices=[]):  # a probe must not move the seeded stream training draws from
            conv = nn.Conv2d(8, 8, 3, padding=1)
            x = torch.randn(2, 8, 6, 6)
        with torch.no_grad(), _disable_current_modes():
            packed = torch.ops.mkldnn._reorder_convolution_weight(conv.weight, [1, 1], [1, 1], [1, 1], 1, list(x.shape))
            out = torch.ops.mkldnn._convolution_pointwise(x, packed, conv.bias, [1, 1], [1, 1], [1, 1], 1,
                                                          'none', [], '')
            return torch.allclose(out, conv(x), atol=1e-5)
    except (RuntimeError, AttributeError):
        return False


def inference_layout(x: torch.Tensor) -> torch.memory_format:
    """The memory format a network should run `x` in: channels_last where its convolutions
    will use packed weights (oneDNN answers in it, so no layout changes between layers)."""
    packs = (in_scope() and not torch.is_grad_enabled() and x.device.type == 'cpu'
             and x.dtype == torch.float32 and not autocast_on() and not torch.compiler.is_compiling()
             and pack_limit_bytes() > 0 and can_pack())
    return torch.channels_last if packs else torch.contiguous_format


def is_channels_last(x: torch.Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


# ---- layout roots ------------------------------------------------------------------------------

def _to_layout(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    x = args[0] if args else None
    relaid = isinstance(x, torch.Tensor) and x.dim() == 4 and inference_layout(x) is torch.channels_last \
        and not is_channels_last(x)
    _THREAD.relaid.setdefault(module, []).append(relaid)
    if relaid:
        return (x.contiguous(memory_format=torch.channels_last), *args[1:]), kwargs
    return None


def _back_to_nchw(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
    stack = _THREAD.relaid.get(module)
    relaid = stack.pop() if stack else False
    if relaid and isinstance(output, torch.Tensor):
        return output.contiguous()  # NCHW for callers, whatever layout the last convolution used
    return output


def attach_layout_hooks(module: nn.Module) -> bool:
    """Make `module` run channels_last inside `packed_weights()` (module doc); False if it already does."""
    if getattr(module, '_accel_layout', False):
        return False
    module._accel_layout = True
    module.register_forward_pre_hook(_to_layout, with_kwargs=True)
    module.register_forward_hook(_back_to_nchw, with_kwargs=True, always_call=True)
    module.constant_weights = packed_weights
    return True

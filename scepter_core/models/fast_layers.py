"""Faster fp32 CPU layers with nn.Linear / nn.Conv2d's parameters and state-dict keys.

Linear: oneDNN's matmul on CPUs where it beats the BLAS torch links.

torch runs an fp32 `F.linear` on the CPU through MKL's sgemm. On AMD CPUs MKL takes a slow
code path: on this project's AVX512 EPYC it reaches ~100 GFLOP/s per core where oneDNN's own
JIT kernels (the ones torch already uses for convolutions) reach ~250 on the same shapes, with
fp32 accuracy (bench/README.md). `Linear` routes fp32 CPU calls through
`torch.ops.mkldnn._linear_pointwise` (forward, and both matmuls of the backward) when a probe
at first use shows oneDNN clearly faster here; everywhere else (CUDA, autocast, half
precision, torch.compile, a torch without the op) it is `nn.Linear`. Parameters and state-dict
keys are those of `nn.Linear`. SCEPTER_CPU_GEMM=onednn|aten forces the choice; `auto` (the
default) probes.

Conv2d: inside `packed_weights()` (sampling wraps itself in it), with no gradient wanted, on
fp32 CPU tensors, the weight is reordered once into oneDNN's blocked layout and reused, as
inductor's weight freezing does; eager torch reorders it at every call, which dominates wide
convolutions on small feature maps (1280 channels at 8x8: ~90 GFLOP/s eager, ~400 packed).
The scope is what keeps this safe: weights do not change while a sampler runs, whereas during
training they change in ways no counter sees (fused AdamW and `.data` writes leave
`_version` as it was). The packed copies cost memory, so only weights up to
SCEPTER_CPU_PACK_LIMIT_MB each (default 4; 0 turns packing off) are packed, and all are
dropped when the outermost scope ends. Larger kernels on small maps, in any fp32 CPU inference,
run as im2col and one oneDNN matmul over the plain weight instead (MATMUL_RATIO): no copy of
the weight is kept, and the weight is not reordered either."""
from __future__ import annotations

import contextlib
import functools
import os
import time
import weakref
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

ENV = 'SCEPTER_CPU_GEMM'
CHOICES = ('auto', 'onednn', 'aten')
# oneDNN must win by this much in the probe: a near tie keeps torch's default (bit-identical
# results with other libraries), and a noisy probe cannot flip the choice between runs.
MIN_SPEEDUP = 1.25
# Below this many multiply-adds oneDNN's fixed cost per call (~10 us; with autograd, the
# Python backward's too) outweighs its faster kernel: small products stay with torch's default.
# Each shape oneDNN runs also keeps ~0.6 MB of JIT kernel in its primitive cache: at 4 M the
# tiny UNet's step at batch 8 uses 13 shapes instead of 24, and is as fast or faster.
MIN_MACS = 1 << 22
MIN_MACS_GRAD = 1 << 23
PACK_ENV, PACK_LIMIT_MB = 'SCEPTER_CPU_PACK_LIMIT_MB', 4.0
# oneDNN's convolution reorders its weight at every call; where the weight is large next to
# the map, im2col and one matmul over the plain weight is faster: SD1.5's 1280-channel 3x3
# kernels (56 MB) on 8x8 and 16x16 latents 1.2-4x at ratios (output channels x kernel area /
# output positions) of 20-180, a tie at 15. Smaller kernels need more: 640 channels (14 MB)
# lose at ratio 22 (bench/README.md). Ratio needed: 16 from 32 MB of weight on, else 40.
MATMUL_RATIO, MATMUL_RATIO_SMALL, MATMUL_LARGE_WEIGHT = 16, 40, 32 * 2 ** 20


def _onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, 'none', [], '')


def matmul_t(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight^T (+ bias) for a 2-D x: oneDNN from MIN_MACS multiply-adds on, torch's BLAS below."""
    if x.shape[0] * x.shape[1] * weight.shape[0] < MIN_MACS:
        return F.linear(x, weight, bias)
    return _onednn(x, weight, bias)


def _best_time(fn, reps: int = 5) -> float:
    fn()
    best = float('inf')
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


@functools.lru_cache(maxsize=None)
def _probe(threads: int) -> bool:
    """True when oneDNN computes a linear correctly and at least MIN_SPEEDUP times faster."""
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        from torch.utils._python_dispatch import _disable_current_modes
        g = torch.Generator().manual_seed(0)
        x, w = torch.randn(512, 512, generator=g), torch.randn(256, 512, generator=g)
        # Timed without any dispatch mode active (a FlopCounterMode, a profiler's): their cost
        # per call would hide the kernels' difference and fix the wrong choice for the process.
        with torch.no_grad(), _disable_current_modes():
            if not torch.allclose(_onednn(x, w, None), x @ w.t(), rtol=1e-4, atol=1e-3):
                return False
            return _best_time(lambda: F.linear(x, w)) >= MIN_SPEEDUP * _best_time(lambda: _onednn(x, w, None))
    except (RuntimeError, AttributeError):  # no such op in this torch build
        return False


def backend() -> str:
    """'onednn' or 'aten': how fp32 CPU linears run in this process (at the current thread count)."""
    choice = os.environ.get(ENV, 'auto').strip().lower() or 'auto'
    if choice not in CHOICES:
        raise ValueError(f'{ENV}={choice!r}: expected one of {", ".join(CHOICES)}')
    if choice == 'auto':
        return 'onednn' if _probe(torch.get_num_threads()) else 'aten'
    return choice


def _autocast_on() -> bool:
    try:
        return torch.is_autocast_enabled('cpu')
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


def _plain_fp32_cpu(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (x.device.type == 'cpu' and x.dtype == torch.float32 and weight.dtype == torch.float32
            and not _autocast_on() and not torch.compiler.is_compiling())


def _needs_grad(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _weight_grad(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """grad^T @ x, a sum over the rows. oneDNN reads a transposed operand fastest as its
    weight, so the wider of the two goes there; a small square product is MKL's strided gemm
    (2.1 M multiply-adds: 24 us against 35), a large one oneDNN's (2048 x 320 x 320: 1.1 ms
    against 1.9)."""
    n, k = grad.shape[1], x.shape[1]
    if grad.shape[0] * n * k < MIN_MACS:
        return torch.mm(grad.t(), x)
    if n > k:
        return _onednn(x.t(), grad.t(), None).t()
    if k > n or grad.shape[0] * n * k >= MIN_MACS_GRAD:
        return _onednn(grad.t(), x.t(), None)
    return torch.mm(grad.t(), x)


class _OneDNNLinear(torch.autograd.Function):
    """y = x W^T + b on a 2-D x; the backward's two matmuls run through the same op."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _onednn(x, weight, bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        need_x, need_w, need_b = ctx.needs_input_grad
        grad_x = _onednn(grad, weight.t(), None) if need_x else None  # grad @ W
        grad_w = _weight_grad(grad, x) if need_w else None
        grad_b = grad.sum(0) if need_b and ctx.has_bias else None
        return grad_x, grad_w, grad_b


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear`, through oneDNN for fp32 CPU tensors where that is faster (see the module doc)."""
    macs = x.numel() * weight.shape[0]
    if macs < MIN_MACS or not macs:  # the common small case first: no further checks
        return F.linear(x, weight, bias)
    grad = _needs_grad(x, weight, bias)
    if (macs < (MIN_MACS_GRAD if grad else MIN_MACS) or not _plain_fp32_cpu(x, weight)
            or backend() != 'onednn'):
        return F.linear(x, weight, bias)
    lead, x2 = x.shape[:-1], x.reshape(-1, x.shape[-1]).contiguous()
    # Without a graph to record, the autograd.Function's own cost is skipped.
    out = _OneDNNLinear.apply(x2, weight, bias) if grad else _onednn(x2, weight, bias)
    return out.view(*lead, weight.shape[0])


class Linear(nn.Linear):
    """`nn.Linear` whose fp32 CPU calls take the faster matmul (same parameters and keys)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


# ---- Conv2d: packed weights in inference ------------------------------------------------------

# module -> (key, weight ref, packed weight); outside the module so copies and pickles never
# carry it. Filled only inside packed_weights().
_PACKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_SCOPES = [0]


@contextlib.contextmanager
def packed_weights() -> Iterator[None]:
    """Within this scope convolution weights count as constant and may be packed (module doc);
    usable as a decorator. Nested scopes share the packs; the outermost one drops them."""
    _SCOPES[0] += 1
    try:
        yield
    finally:
        _SCOPES[0] -= 1
        if not _SCOPES[0]:
            _PACKED.clear()


def pack_limit_bytes() -> float:
    raw = os.environ.get(PACK_ENV, '').strip()
    try:
        return float(raw or PACK_LIMIT_MB) * 2 ** 20
    except ValueError:
        raise ValueError(f'{PACK_ENV}={raw!r}: expected a number of MB (0 turns packing off)') from None


@functools.lru_cache(maxsize=None)
def _can_pack() -> bool:
    """oneDNN's packed convolution exists in this torch and gives the eager numbers."""
    try:
        from torch.utils._python_dispatch import _disable_current_modes
        conv = nn.Conv2d(8, 8, 3, padding=1)
        x = torch.randn(2, 8, 6, 6)
        with torch.no_grad(), _disable_current_modes():
            packed = torch.ops.mkldnn._reorder_convolution_weight(conv.weight, [1, 1], [1, 1], [1, 1], 1, list(x.shape))
            out = torch.ops.mkldnn._convolution_pointwise(x, packed, conv.bias, [1, 1], [1, 1], [1, 1], 1, 'none', [], '')
            return torch.allclose(out, conv(x), atol=1e-5)
    except (RuntimeError, AttributeError):
        return False


def inference_layout(x: torch.Tensor) -> torch.memory_format:
    """The memory format a network should run `x` in: channels_last where its convolutions
    will use packed weights (oneDNN answers in it, so no layout changes between layers)."""
    packs = (_SCOPES[0] > 0 and not torch.is_grad_enabled() and x.device.type == 'cpu' and x.dtype == torch.float32
             and not _autocast_on() and pack_limit_bytes() > 0 and _can_pack())
    return torch.channels_last if packs else torch.contiguous_format


def _is_channels_last(x: torch.Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


class Conv2d(nn.Conv2d):
    """`nn.Conv2d` that, in fp32 CPU inference, runs wide kernels on small maps as one matmul
    and reuses a packed copy of its weight (module doc)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != 'cpu' or x.dtype != torch.float32:  # the CPU paths below: nothing to check
            return super().forward(x)
        if self._as_matmul(x):
            return self._matmul_forward(x)
        if self._small_pointwise_training(x):
            b, c, h, w = x.shape
            out = linear(x.permute(0, 2, 3, 1).reshape(-1, c), self.weight.flatten(1), self.bias)
            return out.view(b, h, w, -1).permute(0, 3, 1, 2).contiguous()
        packed = self._packed_weight(x)
        if packed is None:
            return super().forward(x)
        channels_last = _is_channels_last(x)
        out = torch.ops.mkldnn._convolution_pointwise(
            x if channels_last else x.contiguous(), packed, self.bias, *self._geometry(), 'none', [], '')
        # oneDNN answers in channels_last; callers of an NCHW conv get NCHW, as from nn.Conv2d.
        return out if channels_last else out.contiguous()

    def _out_size(self, x: torch.Tensor) -> tuple[int, int]:
        return tuple((n + 2 * p - k) // s + 1 for n, p, k, s in
                     zip(x.shape[-2:], self.padding, self.kernel_size, self.stride))  # type: ignore[return-value]

    def _as_matmul(self, x: torch.Tensor) -> bool:
        """Whether this call runs as im2col + one oneDNN matmul: inference on fp32 CPU tensors,
        where the weight outweighs the map (MATMUL_RATIO)."""
        if (x.dim() != 4 or self.groups != 1 or self.padding_mode != 'zeros' or isinstance(self.padding, str)
                or tuple(self.dilation) != (1, 1) or _needs_grad(x, self.weight, self.bias)):
            return False
        h, w = self._out_size(x)
        kh, kw = self.kernel_size
        need = MATMUL_RATIO if self.weight.numel() * 4 >= MATMUL_LARGE_WEIGHT else MATMUL_RATIO_SMALL
        return (self.out_channels * kh * kw >= need * x.shape[0] * h * w
                and _plain_fp32_cpu(x, self.weight) and backend() == 'onednn')

    def _small_pointwise_training(self, x: torch.Tensor) -> bool:
        """A small 1x1 convolution in fp32 CPU training runs as a linear map of the channels:
        oneDNN's convolution costs ~1.3x more there (skip connections on 8x8 maps)."""
        return (self.kernel_size == (1, 1) and self.stride == (1, 1) and self.padding == (0, 0) and self.groups == 1
                and x.dim() == 4 and x.numel() * self.out_channels < MIN_MACS_GRAD
                and _needs_grad(x, self.weight, self.bias) and _plain_fp32_cpu(x, self.weight))

    def _matmul_forward(self, x: torch.Tensor) -> torch.Tensor:
        (ph, pw), (kh, kw), (sh, sw) = self.padding, self.kernel_size, self.stride
        b, c = x.shape[:2]
        h, w = self._out_size(x)
        # [B, C, H, W] -> windows [B, h, w, C, kh, kw] -> rows in the weight's (C, kh, kw) order.
        windows = F.pad(x, (pw, pw, ph, ph)).unfold(2, kh, sh).unfold(3, kw, sw)
        cols = windows.permute(0, 2, 3, 1, 4, 5).reshape(b * h * w, c * kh * kw)
        out = _onednn(cols, self.weight.reshape(self.out_channels, -1), self.bias)
        out = out.view(b, h, w, -1).permute(0, 3, 1, 2)  # channels_last strides
        return out if _is_channels_last(x) else out.contiguous()

    def _geometry(self) -> tuple[list[int], list[int], list[int], int]:
        return list(self.padding), list(self.stride), list(self.dilation), self.groups

    def _packed_weight(self, x: torch.Tensor) -> torch.Tensor | None:
        w = self.weight
        if (not _SCOPES[0] or self.padding_mode != 'zeros' or isinstance(self.padding, str) or x.dim() != 4
                or _needs_grad(x, w, self.bias) or not _plain_fp32_cpu(x, w)
                or w.numel() * 4 > pack_limit_bytes() or not _can_pack()):
            _PACKED.pop(self, None)
            return None
        # Repacked when the weight is replaced or written in place (as far as its version
        # counter tells), or the input shape / layout changes (the format is chosen for it).
        # Inference tensors (FSDP gathers weights under inference_mode) keep no counter.
        version = -1 if w.is_inference() else w._version
        key = (w.data_ptr(), version, tuple(x.shape), x.is_contiguous(memory_format=torch.channels_last))
        cached = _PACKED.get(self)
        if cached is None or cached[0] != key or cached[1]() is not w:
            with torch.no_grad():
                packed = torch.ops.mkldnn._reorder_convolution_weight(
                    w, *self._geometry(), list(x.shape))
            cached = _PACKED[self] = (key, weakref.ref(w), packed)
        return cached[2]


def use_fast_linear(module: nn.Module) -> nn.Module:
    """Make every plain `nn.Linear` in `module` (e.g. inside a transformers model) a `Linear`,
    in place: only the forward changes, so weights, hooks and state-dict keys stay as they are."""
    for m in module.modules():
        if type(m) is nn.Linear:
            m.__class__ = Linear
    return module

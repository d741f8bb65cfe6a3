"""fp32 CPU matmuls through oneDNN where it beats the BLAS torch links.

torch runs an fp32 `F.linear` on the CPU through MKL's sgemm. On AMD CPUs MKL takes a slow
code path: on an AVX512 EPYC it reaches ~100 GFLOP/s per core where oneDNN's own JIT kernels
(the ones torch already uses for convolutions) reach ~250 on the same shapes, with fp32
accuracy (bench/README.md). A probe at first use decides, per thread count, whether oneDNN is
clearly faster here (remembered per machine in $SCEPTER_CACHE/cpu_probe.json, so that every
run on a machine takes the same paths); SCEPTER_CPU_GEMM=onednn|aten forces the choice, `auto` (the default)
probes. Everywhere else (CUDA, autocast, half precision, torch.compile, a torch without the
op) `linear` is `F.linear`."""
from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

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


def onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x @ weight^T (+ bias) through oneDNN's matmul (a private torch op)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, 'none', [], '')


def matmul_t(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight^T (+ bias) for a 2-D x: oneDNN from MIN_MACS multiply-adds on, torch's BLAS below."""
    if x.shape[0] * x.shape[1] * weight.shape[0] < MIN_MACS:
        return F.linear(x, weight, bias)
    return onednn(x, weight, bias)


def _best_time(fn: Callable[[], object], reps: int = 5) -> float:
    fn()
    best = float('inf')
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def cpu_signature() -> str:
    """What makes one machine's probe valid on another: CPU model, its flags, cores, torch, and
    the instruction set the kernels run (`ATEN_CPU_CAPABILITY` / `ONEDNN_MAX_CPU_ISA` cap it below
    the CPU's, and the two sides' speeds change with it)."""
    model, flags = platform.machine(), ''
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            key, _, value = line.partition(':')
            if key.strip() == 'model name' and model == platform.machine():
                model = value.strip()
            elif key.strip() == 'flags' and not flags:
                flags = hashlib.sha1(value.strip().encode()).hexdigest()[:12]
    except OSError:
        pass
    isa = torch.backends.cpu.get_cpu_capability()
    if os.environ.get('ONEDNN_MAX_CPU_ISA'):
        isa += f' onednn {os.environ["ONEDNN_MAX_CPU_ISA"]}'
    return f'{model}|{flags}|{os.cpu_count()}|torch {torch.__version__}|{isa}'


def probe_cache_file() -> Path:
    from ..fs import cache_dir  # SCEPTER_CACHE, default ~/.cache/scepter
    return cache_dir() / 'cpu_probe.json'


def _remembered(key: str, measure: Callable[[], float]) -> float:
    """A probe's result, measured once per machine and kept: a timing taken while the machine is
    busy can swing either way, and a choice that changed between runs would change the numbers
    (a resumed run must take the same paths as the run it continues)."""
    path = probe_cache_file()
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if isinstance(known.get(key), (int, float)):
        return float(known[key])
    value = measure()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f'{path.name}.{os.getpid()}.tmp')
        tmp.write_text(json.dumps({**known, key: value}, indent=1))
        os.replace(tmp, path)
    except OSError:  # a read-only home: probe again next time
        pass
    return value


def _measure_speedup() -> float:
    """torch's BLAS time / oneDNN's on a 512x512x256 linear; 0.0 when oneDNN is missing or wrong."""
    try:
        if not torch.backends.mkldnn.is_available():
            return 0.0
        from torch.utils._python_dispatch import _disable_current_modes
        g = torch.Generator().manual_seed(0)
        x, w = torch.randn(512, 512, generator=g), torch.randn(256, 512, generator=g)
        # Timed without any dispatch mode active (a FlopCounterMode, a profiler's): their cost
        # per call would hide the kernels' difference and fix the wrong choice for the process.
        with torch.no_grad(), _disable_current_modes():
            if not torch.allclose(onednn(x, w, None), x @ w.t(), rtol=1e-4, atol=1e-3):
                return 0.0
            ratios = sorted(_best_time(lambda: F.linear(x, w)) / _best_time(lambda: onednn(x, w, None))
                            for _ in range(3))
            return ratios[1]  # the median of three rounds
    except (RuntimeError, AttributeError):  # no such op in this torch build
        return 0.0


@functools.lru_cache(maxsize=None)
def probe_speedup(threads: int) -> float:
    """torch's BLAS time / oneDNN's here at `threads` threads, remembered per machine
    (`probe_cache_file()`; delete it to probe again)."""
    return _remembered(f'{cpu_signature()}|{threads} threads|linear', _measure_speedup)


def choice() -> str:
    """SCEPTER_CPU_GEMM as given: 'auto', 'onednn' or 'aten'."""
    value = os.environ.get(ENV, 'auto').strip().lower() or 'auto'
    if value not in CHOICES:
        raise ValueError(f'{ENV}={value!r}: expected one of {", ".join(CHOICES)}')
    return value


def backend() -> str:
    """'onednn' or 'aten': how fp32 CPU linears run in this process (at the current thread count)."""
    value = choice()
    if value == 'auto':
        return 'onednn' if probe_speedup(torch.get_num_threads()) >= MIN_SPEEDUP else 'aten'
    return value


def autocast_on() -> bool:
    try:
        return torch.is_autocast_enabled('cpu')
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


_PLAIN = (torch.Tensor, torch.nn.Parameter)


def plain_fp32_cpu(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether oneDNN's fp32 kernels may take this product. A tensor subclass (torchao's int8 or
    fp8 weights report float32 as their dtype) has no oneDNN kernel: it keeps its own dispatch."""
    return (type(x) in _PLAIN and type(weight) in _PLAIN
            and x.device.type == 'cpu' and x.dtype == torch.float32 and weight.dtype == torch.float32
            and not autocast_on() and not torch.compiler.is_compiling())


def needs_grad(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def weight_grad(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """grad^T @ x, a sum over the rows. oneDNN reads a transposed operand fastest as its
    weight, so the wider of the two goes there; a small square product is MKL's strided gemm
    (2.1 M multiply-adds: 24 us against 35), a large one oneDNN's (2048 x 320 x 320: 1.1 ms
    against 1.9)."""
    n, k = grad.shape[1], x.shape[1]
    if grad.shape[0] * n * k < MIN_MACS:
        return torch.mm(grad.t(), x)
    if n > k:
        return onednn(x.t(), grad.t(), None).t()
    if k > n or grad.shape[0] * n * k >= MIN_MACS_GRAD:
        return onednn(grad.t(), x.t(), None)
    return torch.mm(grad.t(), x)


class _OneDNNLinear(torch.autograd.Function):
    """y = x W^T + b on a 2-D x; the backward's two matmuls run through the same op."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return onednn(x, weight, bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        need_x, need_w, need_b = ctx.needs_input_grad
        grad_x = onednn(grad, weight.t(), None) if need_x else None  # grad @ W
        grad_w = weight_grad(grad, x) if need_w else None
        grad_b = grad.sum(0) if need_b and ctx.has_bias else None
        return grad_x, grad_w, grad_b


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear`, through oneDNN for fp32 CPU tensors where that is faster (see the module doc)."""
    macs = x.numel() * weight.shape[0]
    if macs < MIN_MACS or not macs:  # the common small case first: no further checks
        return F.linear(x, weight, bias)
    grad = needs_grad(x, weight, bias)
    if (macs < (MIN_MACS_GRAD if grad else MIN_MACS) or not plain_fp32_cpu(x, weight)
            or backend() != 'onednn'):
        return F.linear(x, weight, bias)
    lead, x2 = x.shape[:-1], x.reshape(-1, x.shape[-1]).contiguous()
    # Without a graph to record, the autograd.Function's own cost is skipped.
    out = _OneDNNLinear.apply(x2, weight, bias) if grad else onednn(x2, weight, bias)
    return out.view(*lead, weight.shape[0])

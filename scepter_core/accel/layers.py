"""Faster fp32 CPU layers with nn.Linear / nn.Conv2d's parameters and state-dict keys.

`swap_classes(model, SWAPS)` turns every plain `nn.Linear` / `nn.Conv2d` of a built model into these
subclasses by changing the instance's class: parameters, buffers, hooks, state-dict keys and
peft's wrapping stay as they were; only the forward changes, and it falls back to the parent's
wherever its fast path does not apply (CUDA, autocast, half precision, torch.compile).

Linear: `gemm.linear` (oneDNN where a probe found it faster).
Conv2d: in fp32 CPU inference, packed weights inside `packed_weights()` (packing.py), and
larger kernels on small maps as im2col and one oneDNN matmul over the plain weight
(MATMUL_RATIO): no copy of the weight is kept, and the weight is not reordered either. Small 1x1
convolutions in training run as a linear map of the channels."""
from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import nn

from . import gemm, packing
from .gemm import MIN_MACS_GRAD, linear, needs_grad, plain_fp32_cpu

# oneDNN's convolution reorders its weight at every call; where the weight is large next to
# the map, im2col and one matmul over the plain weight is faster: SD1.5's 1280-channel 3x3
# kernels (56 MB) on 8x8 and 16x16 latents 1.2-4x at ratios (output channels x kernel area /
# output positions) of 20-180, a tie at 15. Smaller kernels need more: 640 channels (14 MB)
# lose at ratio 22 (bench/README.md). Ratio needed: 16 from 32 MB of weight on, else 40.
MATMUL_RATIO, MATMUL_RATIO_SMALL, MATMUL_LARGE_WEIGHT = 16, 40, 32 * 2 ** 20


class Linear(nn.Linear):
    """`nn.Linear` whose fp32 CPU calls take the faster matmul (same parameters and keys)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


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
        channels_last = packing.is_channels_last(x)
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
                or tuple(self.dilation) != (1, 1) or needs_grad(x, self.weight, self.bias)):
            return False
        h, w = self._out_size(x)
        kh, kw = self.kernel_size
        need = MATMUL_RATIO if self.weight.numel() * 4 >= MATMUL_LARGE_WEIGHT else MATMUL_RATIO_SMALL
        return (self.out_channels * kh * kw >= need * x.shape[0] * h * w
                and plain_fp32_cpu(x, self.weight) and gemm.backend() == 'onednn')

    def _small_pointwise_training(self, x: torch.Tensor) -> bool:
        """A small 1x1 convolution in fp32 CPU training runs as a linear map of the channels:
        oneDNN's convolution costs ~1.3x more there (skip connections on 8x8 maps)."""
        return (self.kernel_size == (1, 1) and self.stride == (1, 1) and self.padding == (0, 0) and self.groups == 1
                and x.dim() == 4 and x.numel() * self.out_channels < MIN_MACS_GRAD
                and needs_grad(x, self.weight, self.bias) and plain_fp32_cpu(x, self.weight))

    def _matmul_forward(self, x: torch.Tensor) -> torch.Tensor:
        (ph, pw), (kh, kw), (sh, sw) = self.padding, self.kernel_size, self.stride
        b, c = x.shape[:2]
        h, w = self._out_size(x)
        # [B, C, H, W] -> windows [B, h, w, C, kh, kw] -> rows in the weight's (C, kh, kw) order.
        windows = F.pad(x, (pw, pw, ph, ph)).unfold(2, kh, sh).unfold(3, kw, sw)
        cols = windows.permute(0, 2, 3, 1, 4, 5).reshape(b * h * w, c * kh * kw)
        out = gemm.onednn(cols, self.weight.reshape(self.out_channels, -1), self.bias)
        out = out.view(b, h, w, -1).permute(0, 3, 1, 2)  # channels_last strides
        return out if packing.is_channels_last(x) else out.contiguous()

    def _geometry(self) -> tuple[list[int], list[int], list[int], int]:
        return list(self.padding), list(self.stride), list(self.dilation), self.groups

    def _packed_weight(self, x: torch.Tensor) -> torch.Tensor | None:
        w = self.weight
        if (not packing.in_scope() or self.padding_mode != 'zeros' or isinstance(self.padding, str) or x.dim() != 4
                or needs_grad(x, w, self.bias) or not plain_fp32_cpu(x, w)
                or w.numel() * 4 > packing.pack_limit_bytes() or not packing.can_pack()):
            packing.packs().pop(self, None)
            return None
        # Repacked when the weight is replaced or written in place (as far as its version
        # counter tells), or the input shape / layout changes (the format is chosen for it).
        # Inference tensors (FSDP gathers weights under inference_mode) keep no counter.
        version = -1 if w.is_inference() else w._version
        key = (w.data_ptr(), version, tuple(x.shape), x.is_contiguous(memory_format=torch.channels_last))
        cached = packing.packs().get(self)
        if cached is None or cached[0] != key or cached[1]() is not w:
            with torch.no_grad():
                packed = torch.ops.mkldnn._reorder_convolution_weight(
                    w, *self._geometry(), list(x.shape))
            cached = packing.packs()[self] = (key, weakref.ref(w), packed)
        return cached[2]


SWAPS: dict[type, type] = {nn.Linear: Linear, nn.Conv2d: Conv2d}


def swap_classes(model: nn.Module, table: dict[type, type]) -> dict[str, int]:
    """Every module of `model` whose class is exactly a key of `table` takes the class it maps
    to, in place: parameters, buffers, hooks and state-dict keys stay (the classes differ only
    in methods). Subclasses of their own and peft's wrappers are left alone; the layers a peft
    wrapper holds are swapped. Returns counts by new class name."""
    counts = {new.__name__: 0 for new in table.values()}
    for m in model.modules():
        new = table.get(type(m))
        if new is not None:
            m.__class__ = new
            counts[new.__name__] += 1
    return counts

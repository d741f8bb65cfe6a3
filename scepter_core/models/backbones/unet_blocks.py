"""UNet building blocks with original LDM parameter names: ResBlock (`in_layers`,
`emb_layers`, `out_layers`, `skip_connection`), Downsample (`op`), Upsample (`conv`)."""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn import Conv2d, Linear
from torch.utils.checkpoint import checkpoint



def maybe_checkpoint(module: nn.Module, fn: Callable, *args: torch.Tensor | None) -> torch.Tensor:
    """Run `fn(*args)` under activation checkpointing when the module asks for it and a
    backward pass will follow; otherwise call it directly."""
    if module.use_checkpoint and module.training and torch.is_grad_enabled():
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


def silu(x: torch.Tensor) -> torch.Tensor:
    """SiLU, in place when no gradient will flow through `x` (saves an activation-sized buffer)."""
    return F.silu(x, inplace=not (x.requires_grad and torch.is_grad_enabled()))


class TimestepEmbedding(nn.Module):
    """Sinusoidal features [cos | sin] of (possibly fractional) timesteps, LDM convention.
    The frequency table is computed once per device and kept outside the state dict, in
    fp32 whatever the module dtype, so half-precision models keep exact frequencies."""

    def __init__(self, dim: int, max_period: float = 10000.0):
        super().__init__()
        self.dim = dim
        self.max_period = max_period
        self._freqs: dict[torch.device, torch.Tensor] = {}

    def freqs(self, device: torch.device) -> torch.Tensor:
        table = self._freqs.get(device)
        if table is None:
            half = self.dim // 2
            table = torch.exp(-math.log(self.max_period) *
                              torch.arange(half, dtype=torch.float32, device=device) / half)
            self._freqs[device] = table
        return table

    def forward(self, t: torch.Tensor | float, batch: int, device: torch.device) -> torch.Tensor:
        t = torch.as_tensor(t, device=device).float().reshape(-1)
        if t.numel() == 1 and batch > 1:
            t = t.expand(batch)
        args = t[:, None] * self.freqs(t.device)[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if self.dim % 2:
            emb = F.pad(emb, (0, 1))
        return emb


class Downsample(nn.Module):
    """Stride-2 3x3 convolution (`op`), or average pooling without parameters."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        out_channels = out_channels or channels
        self.op = Conv2d(channels, out_channels, 3, stride=2, padding=1) if use_conv \
            else nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None, context: torch.Tensor | None = None,
                size: torch.Size | None = None) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest 2x upsampling (or to `size`, the skip connection's, for odd inputs), then a
    3x3 convolution (`conv`) when `use_conv`."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        out_channels = out_channels or channels
        self.use_conv = use_conv
        if use_conv:
            self.conv = Conv2d(channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None, context: torch.Tensor | None = None,
                size: torch.Size | None = None) -> torch.Tensor:
        if size is None:
            x = F.interpolate(x, scale_factor=2.0, mode='nearest')
        else:
            x = F.interpolate(x, size=tuple(size), mode='nearest')
        return self.conv(x) if self.use_conv else x


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice with the timestep embedding added in between (or applied
    as scale/shift after the second norm), optional up/down resampling, 1x1 skip."""

    def __init__(self, channels: int, emb_channels: int, dropout: float, out_channels: int | None = None,
                 use_scale_shift_norm: bool = False, up: bool = False, down: bool = False,
                 use_checkpoint: bool = False):
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.use_checkpoint = use_checkpoint
        self.in_layers = nn.Sequential(nn.GroupNorm(32, channels), nn.SiLU(),
                                       Conv2d(channels, out_channels, 3, padding=1))
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        self.emb_layers = nn.Sequential(
            nn.SiLU(), Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels))
        self.out_layers = nn.Sequential(nn.GroupNorm(32, out_channels), nn.SiLU(), nn.Dropout(p=dropout),
                                        Conv2d(out_channels, out_channels, 3, padding=1))
        nn.init.zeros_(self.out_layers[3].weight)  # the block starts as the identity
        nn.init.zeros_(self.out_layers[3].bias)
        self.skip_connection = nn.Identity() if out_channels == channels \
            else Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None = None,
                size: torch.Size | None = None) -> torch.Tensor:
        return maybe_checkpoint(self, self._forward, x, emb)

    def _forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = silu(self.in_layers[0](x))
        if self.updown:
            h, x = self.h_upd(h), self.x_upd(x)
        h = self.in_layers[2](h)
        emb_out = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = torch.addcmul(shift, self.out_layers[0](h), 1 + scale)
        else:  # in place on a fresh conv output, which autograd does not keep
            h = self.out_layers[0](h.add_(emb_out))
        h = self.out_layers[3](self.out_layers[2](silu(h)))
        return h.add_(self.skip_connection(x))


class EmbedSequential(nn.Sequential):
    """A UNet stage: every layer takes (x, emb, context, size); `size` reaches the upsampler."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None, context: torch.Tensor | None = None,
                size: torch.Size | None = None) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb, context, size)
        return x

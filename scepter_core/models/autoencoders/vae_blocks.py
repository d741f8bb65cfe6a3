"""Blocks of the KL autoencoder with original LDM names: ResnetBlock (`norm1`, `conv1`,
`norm2`, `conv2`, `nin_shortcut`), AttnBlock (`norm`, `q`, `k`, `v`, `proj_out` as 1x1
convolutions), Downsample / Upsample (`conv`)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.attention import attention
from ..backbones.unet_blocks import silu
from ..fast_layers import Conv2d


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """Two GroupNorm-SiLU-conv layers and a residual (1x1 `nin_shortcut` when widths differ)."""

    def __init__(self, in_channels: int, out_channels: int | None = None, dropout: float = 0.0):
        super().__init__()
        out_channels = out_channels or in_channels
        self.norm1 = group_norm(in_channels)
        self.conv1 = Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = Conv2d(in_channels, out_channels, 1) if in_channels != out_channels \
            else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(silu(self.norm1(x)))
        h = silu(self.norm2(h))  # rebinding frees conv1's output before conv2 allocates (peak memory)
        h = self.conv2(self.dropout(h))
        return h.add_(self.nin_shortcut(x))  # in place on a fresh conv output


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels, through SDPA."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.q = Conv2d(channels, channels, 1)
        self.k = Conv2d(channels, channels, 1)
        self.v = Conv2d(channels, channels, 1)
        self.proj_out = Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        hn = self.norm(x)
        # [B, C, H, W] -> [B, 1, HW, C]: one head whose width is the channel count.
        q, k, v = (conv(hn).reshape(b, 1, c, h * w).transpose(-1, -2) for conv in (self.q, self.k, self.v))
        out = attention(q, k, v)
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return self.proj_out(out).add_(x)


class Downsample(nn.Module):
    """Halve the resolution: stride-2 conv after padding right/bottom by one, or 2x2 pooling."""

    def __init__(self, channels: int, with_conv: bool):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_conv:
            return self.conv(F.pad(x, (0, 1, 0, 1)))
        return F.avg_pool2d(x, kernel_size=2, stride=2)


class Upsample(nn.Module):
    """Double the resolution (nearest), then a 3x3 conv when `with_conv`."""

    def __init__(self, channels: int, with_conv: bool):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode='nearest')
        return self.conv(x) if self.with_conv else x

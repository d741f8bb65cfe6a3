"""Blocks of the KL autoencoder with original LDM names: ResnetBlock (`norm1`, `conv1`,
`norm2`, `conv2`, `nin_shortcut`), AttnBlock (`norm`, `q`, `k`, `v`, `proj_out` as 1x1
convolutions), Downsample / Upsample (`conv`)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn import Conv2d

from ..backbones.unet_blocks import silu


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
    """Single-head self-attention over all pixels, through SDPA. The 1x1 convolutions (LDM keys)
    run as one linear over [B, HW, C] rows, so q, k and v reach SDPA with unit stride along the
    channels: CUDA's memory-efficient kernel needs that, and without it SDPA falls back to the
    math path, which holds the whole [HW, HW] score matrix (SD1.5 at 512 px, batch 8: 1.4 GB
    more and 3x slower)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.q = Conv2d(channels, channels, 1)
        self.k = Conv2d(channels, channels, 1)
        self.v = Conv2d(channels, channels, 1)
        self.proj_out = Conv2d(channels, channels, 1)

    # The kernels; a subclass may choose others.
    attention, linear = staticmethod(F.scaled_dot_product_attention), staticmethod(F.linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        weight = torch.cat([m.weight for m in (self.q, self.k, self.v)]).flatten(1)
        bias = torch.cat([m.bias for m in (self.q, self.k, self.v)])
        # [B, C, H, W] -> [B, HW, C] rows (a view when x is channels_last); the cast matches
        # USE_AMP's frozen copies, whose norm hands back the outer dtype outside autocast.
        rows = self.norm(x).flatten(2).transpose(1, 2).to(weight.dtype)
        q, k, v = self.linear(rows, weight, bias).unsqueeze(1).chunk(3, dim=-1)  # [B, 1, HW, C] each
        out = self.linear(self.attention(q, k, v).squeeze(1), self.proj_out.weight.flatten(1), self.proj_out.bias)
        return x + out.transpose(1, 2).view(b, c, h, w)  # x first: the sum keeps x's layout


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

    # In CUDA inference, an upsampled map this large is made channels_last: cuDNN's NCHW kernels
    # for its 3x3 conv take a workspace twice the map (SD1.5 decode, 512 px, batch 8, bf16: 2 GiB),
    # its channels_last kernels none. Below it NCHW is faster (measured on an H200).
    CHANNELS_LAST_BYTES = 256 << 20

    def __init__(self, channels: int, with_conv: bool):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        upsampled_bytes = 4 * x.numel() * x.element_size()
        if x.is_cuda and not torch.is_grad_enabled() and upsampled_bytes >= self.CHANNELS_LAST_BYTES:
            x = x.contiguous(memory_format=torch.channels_last)  # the small side is copied
        x = F.interpolate(x, scale_factor=2.0, mode='nearest')
        return self.conv(x) if self.with_conv else x

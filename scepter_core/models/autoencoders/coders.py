"""Encoder and Decoder of the KL autoencoder (LDM layout: `down.N.block/attn/downsample`,
`mid.block_1/attn_1/block_2`, `up.N.block/attn/upsample`, `norm_out`, `conv_out`)."""
from __future__ import annotations

import logging

import torch
from torch import nn
from torch.nn import Conv2d

from ...config import Config
from ...registry import BACKBONES
from ..base import TrainModule
from ..backbones.unet_blocks import silu
from .vae_blocks import AttnBlock, Downsample, ResnetBlock, Upsample, group_norm


def _level(blocks: list[nn.Module], attns: list[nn.Module], resample: tuple[str, nn.Module] | None) -> nn.Module:
    level = nn.Module()
    level.block = nn.ModuleList(blocks)
    level.attn = nn.ModuleList(attns)
    if resample is not None:
        setattr(level, *resample)
    return level


def _middle(ch: int, dropout: float) -> nn.Module:
    mid = nn.Module()
    mid.block_1 = ResnetBlock(ch, ch, dropout)
    mid.attn_1 = AttnBlock(ch)
    mid.block_2 = ResnetBlock(ch, ch, dropout)
    return mid


class _Coder(TrainModule):
    """Keys shared by Encoder and Decoder (Scepter recipes give both blocks the same keys)."""

    para_dict = {
        'CH': {'value': 128, 'description': 'Base channel count.'},
        'OUT_CH': {'value': 3, 'description': 'Image channels produced by the Decoder (the Encoder accepts '
                                              'the key for Scepter recipes).'},
        'NUM_RES_BLOCKS': {'value': 2, 'description': 'Residual blocks per level.'},
        'IN_CHANNELS': {'value': 3, 'description': 'Image channels read by the Encoder (the Decoder accepts '
                                                   'the key for Scepter recipes).'},
        'ATTN_RESOLUTIONS': {'value': [], 'description': 'Levels whose res blocks get attention, as relative '
                                                         'sizes (1 = coarsest, 2 = next, ...), as in Scepter.'},
        'CH_MULT': {'value': [1, 2, 4, 4], 'description': 'Channel multiplier per level.'},
        'Z_CHANNELS': {'value': 4, 'description': 'Latent channels.'},
        'DROPOUT': {'value': 0.0, 'description': 'Dropout in residual blocks.'},
        'RESAMP_WITH_CONV': {'value': True, 'description': 'Resample with convolutions (else pooling).'},
        'USE_CHECKPOINT': {'value': False, 'description': 'Gradient checkpointing of the whole stack.'},
    }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.USE_CHECKPOINT and self.training and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x).contiguous()  # NCHW for callers, whatever the layers used

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def _run_level(level: nn.Module, h: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(level.block):
            h = block(h)
            if len(level.attn):
                h = level.attn[i](h)
        return h


@BACKBONES.register_class()
class Encoder(_Coder):
    """Image [B, IN_CHANNELS, H, W] -> moments [B, 2*Z_CHANNELS, H/f, W/f] (f = 2^(levels-1))."""

    para_dict = {'DOUBLE_Z': {'value': True, 'description': 'Output mean and log-variance (2x Z_CHANNELS).'}}

    def __init__(self, cfg: Config | dict | None = None, logger: logging.Logger | None = None):
        super().__init__(cfg, logger=logger)
        c = self.cfg
        self.conv_in = Conv2d(c.IN_CHANNELS, c.CH, 3, padding=1)
        self.down = nn.ModuleList()
        res = 2 ** (len(c.CH_MULT) - 1)  # relative size, as in LDM configs (attention keyed on it)
        ch = c.CH
        for i, mult in enumerate(c.CH_MULT):
            blocks, attns = [], []
            for _ in range(c.NUM_RES_BLOCKS):
                blocks.append(ResnetBlock(ch, c.CH * mult, c.DROPOUT))
                ch = c.CH * mult
                if res in c.ATTN_RESOLUTIONS:
                    attns.append(AttnBlock(ch))
            last = i == len(c.CH_MULT) - 1
            self.down.append(_level(blocks, attns, None if last else ('downsample', Downsample(ch, c.RESAMP_WITH_CONV))))
            res = res if last else res // 2
        self.mid = _middle(ch, c.DROPOUT)
        self.norm_out = group_norm(ch)
        self.conv_out = Conv2d(ch, 2 * c.Z_CHANNELS if c.DOUBLE_Z else c.Z_CHANNELS, 3, padding=1)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = self._run_level(level, h)
            if hasattr(level, 'downsample'):
                h = level.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(silu(self.norm_out(h)))


@BACKBONES.register_class()
class Decoder(_Coder):
    """Latent [B, Z_CHANNELS, h, w] -> image [B, OUT_CH, h*f, w*f]."""

    para_dict = {
        'GIVE_PRE_END': {'value': False, 'description': 'Return features before the output norm and conv.'},
        'TANH_OUT': {'value': False, 'description': 'Squash the output with tanh.'},
    }

    def __init__(self, cfg: Config | dict | None = None, logger: logging.Logger | None = None):
        super().__init__(cfg, logger=logger)
        c = self.cfg
        ch = c.CH * c.CH_MULT[-1]
        self.conv_in = Conv2d(c.Z_CHANNELS, ch, 3, padding=1)
        self.mid = _middle(ch, c.DROPOUT)
        levels: list[nn.Module] = []
        res = 1
        for i in reversed(range(len(c.CH_MULT))):
            blocks, attns = [], []
            for _ in range(c.NUM_RES_BLOCKS + 1):
                blocks.append(ResnetBlock(ch, c.CH * c.CH_MULT[i], c.DROPOUT))
                ch = c.CH * c.CH_MULT[i]
                if res in c.ATTN_RESOLUTIONS:
                    attns.append(AttnBlock(ch))
            levels.insert(0, _level(blocks, attns, ('upsample', Upsample(ch, c.RESAMP_WITH_CONV)) if i else None))
            res = res * 2 if i else res
        self.up = nn.ModuleList(levels)  # stored coarse-last, run coarse-first, as in LDM
        self.norm_out = group_norm(ch)
        self.conv_out = Conv2d(ch, c.OUT_CH, 3, padding=1)

    def _forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for level in reversed(self.up):
            h = self._run_level(level, h)
            if hasattr(level, 'upsample'):
                h = level.upsample(h)
        if self.cfg.GIVE_PRE_END:
            return h
        h = self.conv_out(silu(self.norm_out(h)))
        return torch.tanh(h) if self.cfg.TANH_OUT else h

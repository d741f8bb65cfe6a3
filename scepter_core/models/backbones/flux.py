"""Flux (BACKBONES): the FLUX.1 rectified-flow transformer, parameter names as in Black
Forest Labs' single files (`double_blocks.N.img_attn.qkv`, `single_blocks.N.linear1`,
`final_layer`), so those load as they are; diffusers' layout is a key table
(convert/flux_map.py). FLUX.1-dev defaults: 11,901,408,320 parameters (schnell, without
the guidance embedding: 11,891,178,560).

It takes the latent unpacked, [B, C, H, W], and packs 2x2 patches into tokens itself, so
the diffusion (and its seeded noise) sees the same tensor as the reference pipeline draws."""
from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from ...config import Config
from ...errors import ConfigError
from ...registry import BACKBONES
from ..base import TrainModule
from .offload import BlockOffload, OffloadsBlocks, run_block
from .flux_blocks import DoubleStreamBlock, LastLayer, MLPEmbedder, SingleStreamBlock, rope_table, timestep_embedding


def pack(x: torch.Tensor, patch: int = 2) -> torch.Tensor:
    """[B, C, H, W] -> [B, (H / p)(W / p), C p p], rows first (diffusers' _pack_latents)."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // patch, patch, w // patch, patch).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // patch) * (w // patch), c * patch * patch)


def unpack(tokens: torch.Tensor, h: int, w: int, patch: int = 2) -> torch.Tensor:
    b, _, d = tokens.shape
    c = d // (patch * patch)
    x = tokens.view(b, h // patch, w // patch, c, patch, patch).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, h, w)


def image_ids(h: int, w: int, batch: int, device: torch.device) -> torch.Tensor:
    """Positions [B, h w, 3] of the packed tokens: (0, row, column)."""
    ids = torch.zeros(h, w, 3, device=device)
    ids[..., 1] = torch.arange(h, device=device)[:, None]
    ids[..., 2] = torch.arange(w, device=device)[None, :]
    return ids.reshape(1, h * w, 3).expand(batch, -1, -1)


@BACKBONES.register_class()
class Flux(OffloadsBlocks, TrainModule):
    """Double-stream then single-stream blocks over text and 2x2-packed image tokens."""

    para_dict = {
        'IN_CHANNELS': {'value': 64, 'description': 'Channels of a packed token (latent channels x 4).'},
        'OUT_CHANNELS': {'value': None, 'type': int, 'description': 'Output token channels (default IN_CHANNELS).'},
        'PATCH_SIZE': {'value': 2, 'description': 'Latent pixels per token side.'},
        'HIDDEN_SIZE': {'value': 3072, 'description': 'Transformer width.'},
        'NUM_HEADS': {'value': 24, 'description': 'Attention heads (head dim = HIDDEN_SIZE / NUM_HEADS).'},
        'AXES_DIM': {'value': [16, 56, 56], 'description': 'Rotary dims of the (t, h, w) position axes; sum = head dim.'},
        'THETA': {'value': 10000, 'description': 'Rotary base.'},
        'VEC_IN_DIM': {'value': 768, 'description': 'Width of the pooled text vector (CLIP-L).'},
        'CONTEXT_IN_DIM': {'value': 4096, 'description': 'Width of the text tokens (T5-XXL).'},
        'GUIDANCE_EMBED': {'value': True, 'description': 'Embed the distilled guidance scale (dev: true, schnell: false).'},
        'MLP_RATIO': {'value': 4.0, 'description': 'MLP hidden width / HIDDEN_SIZE.'},
        'QKV_BIAS': {'value': True, 'description': 'Bias in the double blocks\' qkv projections.'},
        'DEPTH': {'value': 19, 'description': 'Double-stream blocks.'},
        'DEPTH_SINGLE_BLOCKS': {'value': 38, 'description': 'Single-stream blocks.'},
        'USE_GRAD_CHECKPOINT': {'value': False, 'description': 'Recompute each block in the backward (less memory).'},
        'OFFLOAD_BLOCKS': {'value': False, 'description': "Keep the blocks' frozen weights on the CPU, copied to the "
                                                          'device one block at a time (backbones/offload.py).'},
        'PRETRAINED_MODEL': {'value': None, 'type': str, 'description':
                             'BFL single file (bare keys, or under model.diffusion_model.).'},
        'IGNORE_KEYS': {'value': [], 'description': 'Names to skip when loading (prefixes or regexes).'},
    }

    def __init__(self, cfg: Config | dict | None = None, logger: logging.Logger | None = None):
        super().__init__(cfg, logger=logger)
        c = self.cfg
        dim, heads = int(c.HIDDEN_SIZE), int(c.NUM_HEADS)
        if dim % heads or sum(c.AXES_DIM) != dim // heads:
            raise ConfigError(f"'{c.path or 'DIFFUSION_MODEL'}': HIDDEN_SIZE / NUM_HEADS must equal sum(AXES_DIM); "
                              f'got {dim} / {heads} and {list(c.AXES_DIM)}')
        self.out_channels = int(c.OUT_CHANNELS or c.IN_CHANNELS)
        self.img_in = nn.Linear(c.IN_CHANNELS, dim)
        self.time_in = MLPEmbedder(256, dim)
        self.vector_in = MLPEmbedder(c.VEC_IN_DIM, dim)
        if c.GUIDANCE_EMBED:
            self.guidance_in = MLPEmbedder(256, dim)
        self.txt_in = nn.Linear(c.CONTEXT_IN_DIM, dim)
        self.double_blocks = nn.ModuleList(DoubleStreamBlock(dim, heads, c.MLP_RATIO, c.QKV_BIAS)
                                           for _ in range(c.DEPTH))
        self.single_blocks = nn.ModuleList(SingleStreamBlock(dim, heads, c.MLP_RATIO)
                                           for _ in range(c.DEPTH_SINGLE_BLOCKS))
        self.final_layer = LastLayer(dim, self.out_channels)
        self.offload = BlockOffload() if c.OFFLOAD_BLOCKS else None
        if c.PRETRAINED_MODEL:
            self.load_pretrained_model(c.PRETRAINED_MODEL)

    def load_pretrained_model(self, path: str) -> None:
        from ...checkpoint import load_component
        load_component(self, path, ('model.diffusion_model.', 'model.'), self.cfg.IGNORE_KEYS, self.logger)

    def _run(self, block: nn.Module, *args: torch.Tensor) -> Any:
        return run_block(self, block, self.cfg.USE_GRAD_CHECKPOINT, self.offload, args[0].device, *args)

    def vector(self, t: torch.Tensor, y: torch.Tensor, guidance: torch.Tensor | float | None) -> torch.Tensor:
        """The modulation input: embedded timestep (t = s * 1000) + pooled text [+ guidance * 1000]."""
        dtype = self.img_in.weight.dtype
        vec = self.time_in(timestep_embedding(t).to(dtype)) + self.vector_in(y.to(dtype))
        if self.cfg.GUIDANCE_EMBED:
            if guidance is None:
                raise ConfigError('Flux with GUIDANCE_EMBED needs a guidance scale (FLUX.1-dev: --guide-scale)')
            g = torch.as_tensor(guidance, dtype=torch.float32, device=t.device).expand(t.shape[0])
            vec = vec + self.guidance_in(timestep_embedding(g * 1000).to(dtype))
        return vec

    def offload_blocks(self) -> list[nn.Module]:
        return [*self.double_blocks, *self.single_blocks]

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: dict | None = None, **kwargs: Any) -> torch.Tensor:
        """Velocity for the latent x [B, C, H, W] at t [B] (s * 1000). cond: 'crossattn' (or
        'context') text tokens [B, L, CONTEXT_IN_DIM], 'y' pooled [B, VEC_IN_DIM], 'guidance'."""
        cond = cond or {}
        txt = cond.get('crossattn', cond.get('context'))
        p, (h, w) = self.cfg.PATCH_SIZE, x.shape[-2:]
        t = torch.as_tensor(t, device=x.device).expand(x.shape[0])
        img = self.img_in(pack(x, p).to(self.img_in.weight.dtype))
        vec = self.vector(t, cond['y'], cond.get('guidance', kwargs.get('guidance')))
        txt = self.txt_in(txt.to(self.img_in.weight.dtype))
        ids = torch.cat([torch.zeros(x.shape[0], txt.shape[1], 3, device=x.device),
                         image_ids(h // p, w // p, x.shape[0], x.device)], dim=1)
        table = rope_table(ids, list(self.cfg.AXES_DIM), float(self.cfg.THETA))
        if self.offload is not None:
            self.offload.prepare(self.offload_blocks())
        for block in self.double_blocks:
            img, txt = self._run(block, img, txt, vec, table)
        tokens = torch.cat([txt, img], dim=1)
        for block in self.single_blocks:
            tokens = self._run(block, tokens, vec, table)
        out = self.final_layer(tokens[:, txt.shape[1]:], vec)
        return unpack(out, h, w, p).to(x.dtype)

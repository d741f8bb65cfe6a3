"""MMDiT (BACKBONES): the SD3 / SD3.5 transformer with Stability AI's parameter names
(`x_embedder`, `pos_embed`, `t_embedder`, `y_embedder`, `joint_blocks.N.{x,context}_block`,
`final_layer`), so their single files load as they are; diffusers' layout is a key table
(convert/mmdit_map.py). Width 64 x DEPTH and DEPTH heads, as Stability builds it:
SD3.5-large (DEPTH 38, QK_NORM) 8,056,627,520 parameters; SD3.5-medium (DEPTH 24, QK_NORM,
MMDiT-X attention in blocks 0-12, POS_EMBED_MAX_SIZE 384) 2,243,171,520."""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import nn

from ...config import Config
from ...errors import ConfigError
from ...registry import BACKBONES
from ..base import TrainModule
from .flux_blocks import LastLayer, MLPEmbedder, timestep_embedding
from .mmdit_blocks import JointBlock
from .offload import BlockOffload, OffloadsBlocks, run_block


def sincos_pos_embed(dim: int, grid: int, base: int) -> torch.Tensor:
    """Fixed 2-D sin-cos positions [grid * grid, dim] on a grid scaled to `base` cells."""
    coords = np.arange(grid, dtype=np.float64) / (grid / base)
    w, h = np.meshgrid(coords, coords)
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4))

    def one(pos: np.ndarray) -> np.ndarray:
        out = pos.reshape(-1)[:, None] * omega[None]
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)
    return torch.from_numpy(np.concatenate([one(w), one(h)], axis=1)).float()


class Embedder(MLPEmbedder):
    """Stability's `mlp.0` / `mlp.2` names over the same two-layer MLP."""

    def __init__(self, in_dim: int, hidden: int):
        nn.Module.__init__(self)
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, in_channels: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


@BACKBONES.register_class()
class MMDiT(OffloadsBlocks, TrainModule):
    """Joint text-image transformer over PATCH_SIZE patches of the latent."""

    para_dict = {
        'IN_CHANNELS': {'value': 16, 'description': 'Latent channels.'},
        'OUT_CHANNELS': {'value': 16, 'description': 'Output channels.'},
        'PATCH_SIZE': {'value': 2, 'description': 'Latent pixels per patch side.'},
        'DEPTH': {'value': 24, 'description': 'Joint blocks (width 64 x DEPTH, DEPTH heads unless set below).'},
        'HIDDEN_SIZE': {'value': None, 'type': int, 'description': 'Width (default 64 x DEPTH).'},
        'NUM_HEADS': {'value': None, 'type': int, 'description': 'Attention heads (default DEPTH).'},
        'MLP_RATIO': {'value': 4.0, 'description': 'MLP hidden width / width.'},
        'ADM_IN_CHANNELS': {'value': 2048, 'description': 'Width of the pooled text vector (CLIP-L + bigG).'},
        'CONTEXT_EMBEDDER_CONFIG': {'value': {'target': 'torch.nn.Linear', 'params': {'in_features': 4096}},
                                    'type': dict, 'description': "Stability's spelling of the text projection: "
                                    "params.in_features is the text token width (only torch.nn.Linear)."},
        'QK_NORM': {'value': None, 'type': str, 'choices': (None, 'rms'), 'description': 'RMS qk-norm (SD3.5).'},
        'X_BLOCK_SELF_ATTN_LAYERS': {'value': [], 'description': 'Blocks with MMDiT-X image self-attention '
                                                                 '(SD3.5-medium: 0 .. 12).'},
        'POS_EMBED_MAX_SIZE': {'value': 192, 'description': 'Side of the stored position grid (cropped to the image).'},
        'POS_EMBED_BASE_SIZE': {'value': 64, 'description': 'Patches per side the sin-cos grid is scaled to.'},
        'INPUT_SIZE': {'value': None, 'type': int, 'description': "Accepted for Scepter's recipes (unused)."},
        'NUM_PATCHES': {'value': None, 'type': int, 'description': "Accepted for Scepter's recipes (unused)."},
        'POS_EMBED_SCALING_FACTOR': {'value': None, 'type': float,
                                     'description': "Accepted for Scepter's recipes (unused)."},
        'USE_CHECKPOINT': {'value': False, 'description': 'Recompute each block in the backward (less memory).'},
        'OFFLOAD_BLOCKS': {'value': False, 'description': "Keep the blocks' frozen weights on the CPU, copied to the "
                                                          'device one block at a time (backbones/offload.py).'},
        'PRETRAINED_MODEL': {'value': None, 'type': str,
                             'description': 'Stability single file (bare keys or under model.diffusion_model.).'},
        'IGNORE_KEYS': {'value': [], 'type': (list, str), 'description': 'Names to skip when loading.'},
    }

    def __init__(self, cfg: Config | dict | None = None, logger: logging.Logger | None = None):
        super().__init__(cfg, logger=logger)
        c = self.cfg
        dim, heads = int(c.HIDDEN_SIZE or 64 * c.DEPTH), int(c.NUM_HEADS or c.DEPTH)
        context = dict(c.CONTEXT_EMBEDDER_CONFIG)
        if context.get('target', 'torch.nn.Linear') != 'torch.nn.Linear':
            raise ConfigError(f"'{c.path or 'DIFFUSION_MODEL'}.CONTEXT_EMBEDDER_CONFIG.target': only torch.nn.Linear "
                              f"is supported, got {context.get('target')!r}")
        context_dim = int(dict(context.get('params') or {}).get('in_features', 4096))
        self.x_embedder = PatchEmbed(c.PATCH_SIZE, c.IN_CHANNELS, dim)
        m = c.POS_EMBED_MAX_SIZE
        # built on the meta device (sizes, memory plans): the shape only; the values take seconds at 384
        positions = torch.empty(1, m * m, dim) if torch.empty(0).is_meta else \
            sincos_pos_embed(dim, m, c.POS_EMBED_BASE_SIZE)[None]
        self.register_buffer('pos_embed', positions)
        self.t_embedder = Embedder(256, dim)
        self.y_embedder = Embedder(c.ADM_IN_CHANNELS, dim)
        self.context_embedder = nn.Linear(context_dim, dim)
        attn2 = set(c.X_BLOCK_SELF_ATTN_LAYERS)
        self.joint_blocks = nn.ModuleList(
            JointBlock(dim, heads, c.MLP_RATIO, i == c.DEPTH - 1, c.QK_NORM == 'rms', i in attn2)
            for i in range(c.DEPTH))
        self.final_layer = LastLayer(dim, c.PATCH_SIZE ** 2 * c.OUT_CHANNELS)
        self.offload = BlockOffload() if c.OFFLOAD_BLOCKS else None
        if c.PRETRAINED_MODEL:
            from ...checkpoint import load_component
            ignore = [c.IGNORE_KEYS] if isinstance(c.IGNORE_KEYS, str) else c.IGNORE_KEYS
            load_component(self, c.PRETRAINED_MODEL, ('model.diffusion_model.',), ignore, self.logger)

    def cropped_pos_embed(self, h: int, w: int) -> torch.Tensor:
        """The centre h x w patches of the stored grid, [1, h w, D]."""
        m = self.cfg.POS_EMBED_MAX_SIZE
        if h > m or w > m:
            raise ConfigError(f'MMDiT: a {h}x{w}-patch latent exceeds POS_EMBED_MAX_SIZE {m}')
        top, left = (m - h) // 2, (m - w) // 2
        grid = self.pos_embed.view(1, m, m, -1)[:, top:top + h, left:left + w]
        return grid.reshape(1, h * w, -1)

    def offload_blocks(self) -> list[nn.Module]:
        return list(self.joint_blocks)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: dict | None = None, **kwargs: Any) -> torch.Tensor:
        """Velocity for the latent x [B, C, H, W] at t [B] (s * 1000). cond: 'crossattn' text
        tokens [B, L, in_features] and 'y' pooled text [B, ADM_IN_CHANNELS]."""
        cond = cond or {}
        p, (h, w) = self.cfg.PATCH_SIZE, x.shape[-2:]
        dtype = self.context_embedder.weight.dtype
        tokens = self.x_embedder(x.to(dtype)) + self.cropped_pos_embed(h // p, w // p).to(dtype)
        t = torch.as_tensor(t, device=x.device).expand(x.shape[0])
        c = self.t_embedder(timestep_embedding(t).to(dtype)) + self.y_embedder(cond['y'].to(dtype))
        context = self.context_embedder(cond.get('crossattn', cond.get('context')).to(dtype))
        if self.offload is not None:
            self.offload.prepare(self.offload_blocks())
        for block in self.joint_blocks:
            context, tokens = run_block(self, block, self.cfg.USE_CHECKPOINT, self.offload, x.device, context, tokens, c)
        out = self.final_layer(tokens, c).view(x.shape[0], h // p, w // p, p, p, -1)
        return torch.einsum('bhwpqc->bchpwq', out).reshape(x.shape[0], -1, h, w).to(x.dtype)

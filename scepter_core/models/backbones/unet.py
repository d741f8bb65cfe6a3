"""DiffusionUNet: the LDM / Stable Diffusion UNet, parameter names as in the original
CompVis checkpoints (`time_embed`, `input_blocks`, `middle_block`, `output_blocks`, `out`)."""
from __future__ import annotations

import contextlib
import itertools
import logging
from typing import Any

import torch
from torch import nn
from torch.nn import Conv2d, Linear

from ...config import Config
from ...convert.configs import attention_levels
from ...errors import ConfigError
from ...registry import BACKBONES
from ..base import TrainModule
from .attention import SpatialTransformer
from .unet_blocks import Downsample, EmbedSequential, ResBlock, TimestepEmbedding, Upsample


@BACKBONES.register_class()
class DiffusionUNet(TrainModule):
    """Noise-prediction UNet with cross-attention (SD1.5 defaults: 859,520,964 parameters)."""

    para_dict = {
        'IN_CHANNELS': {'value': 4, 'description': 'Input channels (latent channels, plus any concat condition).'},
        'OUT_CHANNELS': {'value': 4, 'description': 'Output channels.'},
        'MODEL_CHANNELS': {'value': 320, 'description': 'Base channel count.'},
        'NUM_RES_BLOCKS': {'value': 2, 'type': (int, list),
                           'description': 'Residual blocks per level (an int, or one per level).'},
        'ATTENTION_RESOLUTIONS': {'value': [4, 2, 1], 'description':
                                  'Downsampling factors at which a spatial transformer follows each res block.'},
        'CHANNEL_MULT': {'value': [1, 2, 4, 4], 'description': 'Channel multiplier of each level.'},
        'CONV_RESAMPLE': {'value': True, 'description': 'Resample with convolutions (else pooling/nearest).'},
        'DIMS': {'value': 2, 'choices': (2,), 'description': 'Spatial dimensions (only 2-D is implemented).'},
        'NUM_HEADS': {'value': 8, 'description': 'Attention heads (used when NUM_HEAD_CHANNELS is -1).'},
        'NUM_HEAD_CHANNELS': {'value': -1, 'description': 'Channels per attention head; -1 uses NUM_HEADS.'},
        'NUM_HEADS_CHANNELS': {'value': None, 'type': int,
                               'description': "Scepter's spelling of NUM_HEAD_CHANNELS; wins when set."},
        'USE_SCALE_SHIFT_NORM': {'value': False, 'description': 'FiLM-style timestep conditioning in res blocks.'},
        'RESBLOCK_UPDOWN': {'value': False, 'description': 'Resample with res blocks instead of plain layers.'},
        'USE_SPATIAL_TRANSFORMER': {'value': True, 'choices': (True,),
                                    'description': 'Cross-attention transformers (the only attention implemented).'},
        'TRANSFORMER_DEPTH': {'value': 1, 'type': (int, list), 'description':
                              'Transformer blocks per attention layer (an int, or one per level; 0: no attention).'},
        'TRANSFORMER_DEPTH_MIDDLE': {'value': None, 'type': int,
                                     'description': "Middle block's transformer blocks; null: the last level's."},
        'CONTEXT_DIM': {'value': 768, 'type': (int, list),
                        'description': 'Width of the cross-attention context (an int, or one per level).'},
        'UPCAST_ATTENTION': {'value': False, 'description':
                             'Attention in float32 under half precision (SD2.1-v overflows in fp16 otherwise).'},
        'DISABLE_SELF_ATTENTIONS': {'value': None, 'type': list, 'description':
                                    'Per level: true makes the first attention cross-only.'},
        'DISABLE_MIDDLE_SELF_ATTN': {'value': False, 'description': 'Cross-only first attention in the middle.'},
        'USE_LINEAR_IN_TRANSFORMER': {'value': False, 'description': 'Linear (not 1x1 conv) proj_in/proj_out.'},
        'NUM_CLASSES': {'value': None, 'type': (int, str), 'description':
                        "Class conditioning: an int (embedding table) or 'sequential' (vector of ADM_IN_CHANNELS)."},
        'ADM_IN_CHANNELS': {'value': 2048, 'description': "Vector width when NUM_CLASSES is 'sequential'."},
        'USE_CHECKPOINT': {'value': False, 'description': 'Gradient checkpointing of res and attention blocks.'},
        'DROPOUT': {'value': 0.0, 'description': 'Dropout rate in res blocks and transformers.'},
        'PRETRAINED_MODEL': {'value': None, 'type': str, 'description':
                             'Weights with LDM names, bare or under model.diffusion_model. (SD file) or model. (ours).'},
        'IGNORE_KEYS': {'value': [], 'description': 'Names (prefix removed) to skip when loading: literal prefixes, '
                                                    'or regexes when they use regex syntax.'},
    }

    def __init__(self, cfg: Config | dict | None = None, logger: logging.Logger | None = None):
        super().__init__(cfg, logger=logger)
        c = self.cfg
        levels = len(c.CHANNEL_MULT)
        self.num_res_blocks = self._per_level(c.NUM_RES_BLOCKS, levels, 'NUM_RES_BLOCKS')
        self.transformer_depth = self._per_level(c.TRANSFORMER_DEPTH, levels, 'TRANSFORMER_DEPTH')
        self.disabled_sa = self._per_level(c.DISABLE_SELF_ATTENTIONS or False, levels, 'DISABLE_SELF_ATTENTIONS')
        self.context_dims = self._per_level(c.CONTEXT_DIM, levels, 'CONTEXT_DIM')
        self.attention_levels = attention_levels(c)
        self.head_channels = c.NUM_HEADS_CHANNELS if c.NUM_HEADS_CHANNELS is not None else c.NUM_HEAD_CHANNELS
        if self.head_channels == -1 and c.NUM_HEADS <= 0:
            raise ConfigError(f"'{c.path or 'DiffusionUNet'}': set NUM_HEADS > 0 or NUM_HEAD_CHANNELS > 0")
        emb_dim = c.MODEL_CHANNELS * 4
        self.time_features = TimestepEmbedding(c.MODEL_CHANNELS)
        # With pretrained weights, build on meta: the checkpoint's tensors become the
        # parameters (no random init, no second copy); anything missing is initialised after.
        with torch.device('meta') if c.PRETRAINED_MODEL else contextlib.nullcontext():
            self.time_embed = nn.Sequential(Linear(c.MODEL_CHANNELS, emb_dim), nn.SiLU(),
                                            Linear(emb_dim, emb_dim))
            self._build_label_embedding(emb_dim)
            self._build_blocks(emb_dim)
        if c.PRETRAINED_MODEL:
            self.load_pretrained_model(c.PRETRAINED_MODEL)

    # ---- construction -------------------------------------------------------------------
    def _per_level(self, value: Any, levels: int, key: str) -> list:
        if isinstance(value, (list, tuple)):
            if len(value) != levels:
                raise ConfigError(f"'{self.cfg.path or 'DiffusionUNet'}.{key}': expected one value per level "
                                  f"({levels}, from CHANNEL_MULT), got {list(value)}")
            return list(value)
        return [value] * levels

    def _build_label_embedding(self, emb_dim: int) -> None:
        n = self.cfg.NUM_CLASSES
        if n is None:
            return
        if isinstance(n, int):
            self.label_emb = nn.Embedding(n, emb_dim)
        elif n == 'sequential':
            adm = self.cfg.ADM_IN_CHANNELS
            self.label_emb = nn.Sequential(nn.Sequential(Linear(adm, emb_dim), nn.SiLU(),
                                                         Linear(emb_dim, emb_dim)))
        else:
            raise ConfigError(f"'{self.cfg.path or 'DiffusionUNet'}.NUM_CLASSES': expected an int or "
                              f"'sequential', got {n!r}")

    def _heads(self, ch: int) -> tuple[int, int]:
        if self.head_channels == -1:
            return self.cfg.NUM_HEADS, ch // self.cfg.NUM_HEADS
        return ch // self.head_channels, self.head_channels

    def _res(self, ch: int, emb_dim: int, out: int | None = None, **kw: bool) -> ResBlock:
        c = self.cfg
        return ResBlock(ch, emb_dim, c.DROPOUT, out, c.USE_SCALE_SHIFT_NORM, use_checkpoint=c.USE_CHECKPOINT, **kw)

    def _attn(self, ch: int, level: int, middle: bool = False) -> SpatialTransformer:
        c = self.cfg
        heads, dim_head = self._heads(ch)
        depth = (c.TRANSFORMER_DEPTH_MIDDLE if c.TRANSFORMER_DEPTH_MIDDLE is not None
                 else self.transformer_depth[-1]) if middle else self.transformer_depth[level]
        disabled = c.DISABLE_MIDDLE_SELF_ATTN if middle else self.disabled_sa[level]
        return SpatialTransformer(ch, heads, dim_head, depth, self.context_dims[level], c.DROPOUT, disabled,
                                  c.USE_LINEAR_IN_TRANSFORMER, c.USE_CHECKPOINT, c.UPCAST_ATTENTION)

    def _build_blocks(self, emb_dim: int) -> None:
        c = self.cfg
        mc = c.MODEL_CHANNELS
        self.input_blocks = nn.ModuleList([nn.Sequential(Conv2d(c.IN_CHANNELS, mc, 3, padding=1))])
        skip_chans, ch = [mc], mc
        for level, mult in enumerate(c.CHANNEL_MULT):
            for _ in range(self.num_res_blocks[level]):
                layers: list[nn.Module] = [self._res(ch, emb_dim, mult * mc)]
                ch = mult * mc
                if self.attention_levels[level]:
                    layers.append(self._attn(ch, level))
                self.input_blocks.append(EmbedSequential(*layers))
                skip_chans.append(ch)
            if level != len(c.CHANNEL_MULT) - 1:
                down = self._res(ch, emb_dim, ch, down=True) if c.RESBLOCK_UPDOWN \
                    else Downsample(ch, c.CONV_RESAMPLE)
                self.input_blocks.append(EmbedSequential(down))
                skip_chans.append(ch)
        self.middle_block = EmbedSequential(
            self._res(ch, emb_dim), self._attn(ch, len(c.CHANNEL_MULT) - 1, middle=True),
            self._res(ch, emb_dim))
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(c.CHANNEL_MULT))):
            for i in range(self.num_res_blocks[level] + 1):
                layers = [self._res(ch + skip_chans.pop(), emb_dim, mc * mult)]
                ch = mc * mult
                if self.attention_levels[level]:
                    layers.append(self._attn(ch, level))
                if level and i == self.num_res_blocks[level]:
                    layers.append(self._res(ch, emb_dim, ch, up=True) if c.RESBLOCK_UPDOWN
                                  else Upsample(ch, c.CONV_RESAMPLE))
                self.output_blocks.append(EmbedSequential(*layers))
        self.out = nn.Sequential(nn.GroupNorm(32, ch), nn.SiLU(), Conv2d(mc, c.OUT_CHANNELS, 3, padding=1))
        nn.init.zeros_(self.out[2].weight)
        nn.init.zeros_(self.out[2].bias)

    def load_pretrained_model(self, path: str) -> None:
        from ...checkpoint import load_component
        load_component(self, path, ('model.diffusion_model.', 'model.'), self.cfg.IGNORE_KEYS, self.logger)

    # ---- forward --------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | dict | None = None,
                **kwargs: Any) -> torch.Tensor:
        """Predict from `x` [B, C, H, W] at timesteps `t` [B] (or a scalar). `cond` is the
        context [B, L, CONTEXT_DIM] or a dict with 'crossattn', 'concat' (joined on channels)
        and 'y' or 'vector' (class ids or vectors: SDXL's pooled text + size embeddings).
        Extra keyword arguments are accepted and ignored."""
        context, y = cond, None
        if isinstance(cond, dict):
            context, y = cond.get('crossattn'), cond.get('y', cond.get('vector'))
            if cond.get('concat') is not None:
                x = torch.cat([x, cond['concat']], dim=1)
        t_emb = self.time_features(t, x.shape[0], x.device).to(self.time_embed[0].weight.dtype)
        emb = self.time_embed(t_emb)
        if y is not None:
            if not hasattr(self, 'label_emb'):
                raise ConfigError("DiffusionUNet got cond['y'] but NUM_CLASSES is not set")
            emb = emb + self.label_emb(y)
        h = self.input_blocks[0](x)
        skips = [h]
        for block in itertools.islice(self.input_blocks, 1, None):
            h = block(h, emb, context)
            skips.append(h)
        h = self.middle_block(h, emb, context)
        for block in self.output_blocks:
            h = torch.cat([h, skips.pop()], dim=1)
            h = block(h, emb, context, skips[-1].shape[-2:] if skips else None)
        return self.out(h)


@BACKBONES.register_class()
class DiffusionUNetXL(DiffusionUNet):
    """Scepter's SDXL UNet name: the same network, SDXL base defaults (2,567,463,684 parameters),
    `cond` a dict with 'crossattn' [B, 77, 2048] and 'vector' (or 'y') [B, 2816]."""

    para_dict = {
        'CHANNEL_MULT': {'value': [1, 2, 4], 'description': 'Channel multiplier of each level.'},
        'ATTENTION_RESOLUTIONS': {'value': [4, 2], 'description':
                                  'Downsampling factors at which a spatial transformer follows each res block.'},
        'TRANSFORMER_DEPTH': {'value': [1, 2, 10], 'type': (int, list), 'description':
                              'Transformer blocks per attention layer (an int, or one per level; 0: no attention).'},
        'NUM_HEADS_CHANNELS': {'value': 64, 'type': int, 'description': 'Channels per attention head.'},
        'CONTEXT_DIM': {'value': 2048, 'type': (int, list), 'description': 'Width of the cross-attention context.'},
        'USE_LINEAR_IN_TRANSFORMER': {'value': True, 'description': 'Linear (not 1x1 conv) proj_in/proj_out.'},
        'NUM_CLASSES': {'value': 'sequential', 'type': (int, str),
                        'description': "'sequential': the UNet takes a vector y of ADM_IN_CHANNELS."},
        'ADM_IN_CHANNELS': {'value': 2816, 'description': 'Width of y (pooled text 1280 + 6 size embeddings x 256).'},
        # Keys of Scepter's recipes with one meaning here (the only behaviour implemented).
        'USE_NEW_ATTENTION_ORDER': {'value': True, 'choices': (True,),
                                    'description': 'Split heads before q/k/v (the only order implemented).'},
        'USE_SENTENCE_EMB': {'value': False, 'choices': (False,), 'description': 'Not implemented: false.'},
        'USE_WORD_MAPPING': {'value': False, 'choices': (False,), 'description': 'Not implemented: false.'},
    }

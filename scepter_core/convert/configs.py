"""Architecture configs across formats: our blocks (defaults filled from the registered
classes) <-> diffusers / transformers `config.json` dicts."""
from __future__ import annotations

import copy
from typing import Any, Mapping

from ..config import Config
from ..errors import ConfigError

SD_SCALE_FACTOR = 0.18215


def _filled(registry: str, cfg: Mapping | None, name: str) -> Config:
    from ..registry import REGISTRIES, prepare_config
    block = Config(copy.deepcopy(dict(cfg or {})))
    block.setdefault('NAME', name)
    return prepare_config(REGISTRIES[registry].get(block.NAME), block, block.path)


def filled_unet_cfg(cfg: Mapping | None = None) -> Config:
    """A DiffusionUNet block with every default filled (None = the SD1.5 UNet)."""
    return _filled('BACKBONES', cfg, 'DiffusionUNet')


def filled_vae_cfg(cfg: Mapping | None = None) -> Config:
    """An AutoencoderKL block with its ENCODER/DECODER defaults filled (None = the SD1.5 VAE)."""
    c = _filled('MODELS', cfg, 'AutoencoderKL')
    c.ENCODER = _filled('BACKBONES', c.ENCODER, 'Encoder')
    c.DECODER = _filled('BACKBONES', c.DECODER, 'Decoder')
    return c


def per_level(value: Any, levels: int) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value] * levels


def _one_or_list(values: list) -> Any:
    return values[0] if len(set(values)) == 1 else values


def _unsupported(what: str, problems: list[str]) -> None:
    if problems:
        raise ConfigError(f"{what} has no diffusers equivalent: {'; '.join(problems)}")


# ---- UNet -------------------------------------------------------------------------------

def diffusers_unet_config(cfg: Mapping | None = None, time_embed_dim: int = 256) -> dict:
    """`UNet2DConditionModel` config.json for our DiffusionUNet block. `time_embed_dim`: width of
    each SDXL size embedding in the vector `y` (NUM_CLASSES 'sequential'; 256 in SDXL)."""
    c = filled_unet_cfg(cfg)
    head_ch = c.NUM_HEADS_CHANNELS if c.NUM_HEADS_CHANNELS is not None else c.NUM_HEAD_CHANNELS
    _unsupported('DiffusionUNet', [msg for bad, msg in (
        (c.RESBLOCK_UPDOWN, 'RESBLOCK_UPDOWN: true'), (not c.CONV_RESAMPLE, 'CONV_RESAMPLE: false'),
        (any(c.DISABLE_SELF_ATTENTIONS or []), 'DISABLE_SELF_ATTENTIONS'),
        (c.DISABLE_MIDDLE_SELF_ATTN, 'DISABLE_MIDDLE_SELF_ATTN: true'),
        (len(set(per_level(c.CONTEXT_DIM, len(c.CHANNEL_MULT)))) > 1, 'CONTEXT_DIM different per level'),
        (c.TRANSFORMER_DEPTH_MIDDLE not in (None, per_level(c.TRANSFORMER_DEPTH, len(c.CHANNEL_MULT))[-1]),
         'TRANSFORMER_DEPTH_MIDDLE other than the last level\'s'),
        (isinstance(c.NUM_CLASSES, str) and c.NUM_CLASSES != 'sequential', f'NUM_CLASSES: {c.NUM_CLASSES}')) if bad])
    levels = len(c.CHANNEL_MULT)
    widths = [c.MODEL_CHANNELS * m for m in c.CHANNEL_MULT]
    attn = attention_levels(c)
    heads = [c.NUM_HEADS] * levels if head_ch == -1 else [w // head_ch for w in widths]
    depth = [d if a else 1 for d, a in zip(per_level(c.TRANSFORMER_DEPTH, levels), attn)]
    labels = {'num_class_embeds': c.NUM_CLASSES}
    if c.NUM_CLASSES == 'sequential':  # SDXL: y = [pooled text | sinusoidal size embeddings]
        labels = {'num_class_embeds': None, 'addition_embed_type': 'text_time',
                  'addition_time_embed_dim': time_embed_dim, 'projection_class_embeddings_input_dim': c.ADM_IN_CHANNELS}
    return {
        '_class_name': 'UNet2DConditionModel', 'sample_size': 64,
        'in_channels': c.IN_CHANNELS, 'out_channels': c.OUT_CHANNELS, 'center_input_sample': False,
        'flip_sin_to_cos': True, 'freq_shift': 0,
        'down_block_types': ['CrossAttnDownBlock2D' if a else 'DownBlock2D' for a in attn],
        'mid_block_type': 'UNetMidBlock2DCrossAttn',
        'up_block_types': ['CrossAttnUpBlock2D' if a else 'UpBlock2D' for a in reversed(attn)],
        'only_cross_attention': False, 'block_out_channels': widths,
        'layers_per_block': _one_or_list(per_level(c.NUM_RES_BLOCKS, levels)),
        'downsample_padding': 1, 'mid_block_scale_factor': 1, 'dropout': float(c.DROPOUT), 'act_fn': 'silu',
        'norm_num_groups': 32, 'norm_eps': 1e-5, 'cross_attention_dim': per_level(c.CONTEXT_DIM, levels)[0],
        'transformer_layers_per_block': _one_or_list(depth),
        'attention_head_dim': _one_or_list(heads), 'use_linear_projection': bool(c.USE_LINEAR_IN_TRANSFORMER),
        'resnet_time_scale_shift': 'scale_shift' if c.USE_SCALE_SHIFT_NORM else 'default',
        'upcast_attention': bool(c.UPCAST_ATTENTION), **labels,
    }


def unet_cfg_from_diffusers(config: Mapping) -> dict:
    """Our DiffusionUNet block for a `UNet2DConditionModel` config.json."""
    widths = list(config['block_out_channels'])
    levels = len(widths)
    down = list(config.get('down_block_types') or [])
    heads = per_level(config.get('num_attention_heads') or config.get('attention_head_dim', 8), levels)
    out = {
        'NAME': 'DiffusionUNet', 'IN_CHANNELS': config.get('in_channels', 4),
        'OUT_CHANNELS': config.get('out_channels', 4), 'MODEL_CHANNELS': widths[0],
        'CHANNEL_MULT': [w // widths[0] for w in widths],
        'NUM_RES_BLOCKS': config.get('layers_per_block', 2),
        'ATTENTION_RESOLUTIONS': [2 ** i for i, t in enumerate(down) if 'CrossAttn' in t],
        'TRANSFORMER_DEPTH': config.get('transformer_layers_per_block') or 1,
        'CONTEXT_DIM': config.get('cross_attention_dim', 768),
        'USE_LINEAR_IN_TRANSFORMER': bool(config.get('use_linear_projection', False)),
        'USE_SCALE_SHIFT_NORM': config.get('resnet_time_scale_shift', 'default') == 'scale_shift',
        'DROPOUT': float(config.get('dropout', 0.0)), 'NUM_CLASSES': config.get('num_class_embeds'),
        'UPCAST_ATTENTION': bool(config.get('upcast_attention', False)),
    }
    if config.get('addition_embed_type') == 'text_time':  # SDXL's add_embedding over [pooled | size embeddings]
        out.update(NUM_CLASSES='sequential', ADM_IN_CHANNELS=config['projection_class_embeddings_input_dim'])
    elif config.get('addition_embed_type') or config.get('class_embed_type'):
        raise ConfigError(f"diffusers UNet: addition_embed_type {config.get('addition_embed_type')!r} / "
                          f"class_embed_type {config.get('class_embed_type')!r} is not supported")
    if len(set(heads)) == 1:
        out.update(NUM_HEADS=heads[0], NUM_HEAD_CHANNELS=-1)
    else:
        per_head = {w // h for w, h in zip(widths, heads)}
        if len(per_head) != 1:
            raise ConfigError(f'diffusers UNet: attention heads {heads} fit neither a fixed head count '
                              f'nor a fixed head width')
        out.update(NUM_HEAD_CHANNELS=per_head.pop())
    return out


# ---- VAE --------------------------------------------------------------------------------

def diffusers_vae_config(cfg: Mapping | None = None, scaling_factor: float = SD_SCALE_FACTOR) -> dict:
    """diffusers `AutoencoderKL` config.json for our AutoencoderKL block."""
    c = filled_vae_cfg(cfg)
    enc, dec = c.ENCODER, c.DECODER
    _unsupported('AutoencoderKL', [msg for bad, msg in (
        (enc.ATTN_RESOLUTIONS or dec.ATTN_RESOLUTIONS, 'ATTN_RESOLUTIONS other than []'),
        (not (enc.RESAMP_WITH_CONV and dec.RESAMP_WITH_CONV), 'RESAMP_WITH_CONV: false'),
        (not enc.DOUBLE_Z, 'DOUBLE_Z: false'), (dec.TANH_OUT or dec.GIVE_PRE_END, 'TANH_OUT / GIVE_PRE_END'),
        (c.EMBED_DIM != enc.Z_CHANNELS, 'EMBED_DIM different from Z_CHANNELS'),
        ((enc.CH, list(enc.CH_MULT), enc.NUM_RES_BLOCKS, enc.Z_CHANNELS) !=
         (dec.CH, list(dec.CH_MULT), dec.NUM_RES_BLOCKS, dec.Z_CHANNELS), 'ENCODER and DECODER of different shape'),
    ) if bad])
    n = len(enc.CH_MULT)
    return {
        '_class_name': 'AutoencoderKL', 'in_channels': enc.IN_CHANNELS, 'out_channels': dec.OUT_CH,
        'down_block_types': ['DownEncoderBlock2D'] * n, 'up_block_types': ['UpDecoderBlock2D'] * n,
        'block_out_channels': [enc.CH * m for m in enc.CH_MULT], 'layers_per_block': enc.NUM_RES_BLOCKS,
        'act_fn': 'silu', 'latent_channels': enc.Z_CHANNELS, 'norm_num_groups': 32,
        'sample_size': 2 ** (n - 1) * 64, 'scaling_factor': scaling_factor,
    }


def vae_cfg_from_diffusers(config: Mapping) -> dict:
    """Our AutoencoderKL block for a diffusers `AutoencoderKL` config.json."""
    widths = list(config['block_out_channels'])
    shared = {'CH': widths[0], 'CH_MULT': [w // widths[0] for w in widths],
              'NUM_RES_BLOCKS': config.get('layers_per_block', 1), 'Z_CHANNELS': config.get('latent_channels', 4),
              'IN_CHANNELS': config.get('in_channels', 3), 'OUT_CH': config.get('out_channels', 3),
              'ATTN_RESOLUTIONS': []}
    return {'NAME': 'AutoencoderKL', 'EMBED_DIM': shared['Z_CHANNELS'],
            'ENCODER': {'NAME': 'Encoder', **shared}, 'DECODER': {'NAME': 'Decoder', **shared}}


# ---- text encoder -----------------------------------------------------------------------

def clip_text_config_from_state(sd: Mapping[str, Any]) -> dict:
    """A `CLIPTextConfig` dict read off CLIPTextModel weights (with or without `text_model.`).
    Head count is not stored in weights: hidden/64, as in OpenAI CLIP ViT-L/14 (SD1.x)."""
    sd = {k.removeprefix('text_model.'): v for k, v in sd.items()}
    emb = sd['embeddings.token_embedding.weight']
    layers = {k.split('.')[2] for k in sd if k.startswith('encoder.layers.')}
    hidden = emb.shape[1]
    return {
        'architectures': ['CLIPTextModel'], 'model_type': 'clip_text_model',
        'vocab_size': emb.shape[0], 'hidden_size': hidden,
        'intermediate_size': sd['encoder.layers.0.mlp.fc1.weight'].shape[0],
        'num_hidden_layers': len(layers), 'num_attention_heads': max(1, hidden // 64),
        'max_position_embeddings': sd['embeddings.position_embedding.weight'].shape[0],
        'hidden_act': 'quick_gelu', 'layer_norm_eps': 1e-5, 'projection_dim': hidden,
        'bos_token_id': 49406, 'eos_token_id': 49407, 'pad_token_id': 1,
    }


def find_model_blocks(recipe: Mapping) -> tuple[dict | None, dict | None]:
    """(DIFFUSION_MODEL, FIRST_STAGE_MODEL) blocks of a recipe, wherever its model block is."""
    for path in ('SOLVER.MODEL', 'MODEL', ''):
        node: Any = recipe
        for part in filter(None, path.split('.')):
            node = node.get(part) if isinstance(node, Mapping) else None
        if isinstance(node, Mapping) and ('DIFFUSION_MODEL' in node or 'FIRST_STAGE_MODEL' in node):
            return node.get('DIFFUSION_MODEL'), node.get('FIRST_STAGE_MODEL')
    return None, None


def attention_levels(cfg: Config) -> list[bool]:
    """Per level: whether its blocks end in a spatial transformer (its downsampling factor is
    in ATTENTION_RESOLUTIONS and its TRANSFORMER_DEPTH is not 0). `cfg`: a filled UNet block."""
    levels = len(cfg.CHANNEL_MULT)
    depth = cfg.TRANSFORMER_DEPTH if isinstance(cfg.TRANSFORMER_DEPTH, (list, tuple)) \
        else [cfg.TRANSFORMER_DEPTH] * levels
    return [2 ** level in cfg.ATTENTION_RESOLUTIONS and depth[level] > 0 for level in range(levels)]

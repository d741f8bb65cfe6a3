"""Architecture blocks read off weights in our names (an original single file after
`ldm_to_ours`): the UNet, VAE and text-encoder sizes a file holds, whatever they are.

Two things weights do not record: the attention head split (SD1.x: 8 heads; SD2 / SDXL: 64
channels a head, fewer when the layer is narrower) and the text encoder's head count (width /
64, as in every published CLIP text tower)."""
from __future__ import annotations

import re
from typing import Mapping

import torch

from ..errors import CheckpointError
from .configs import clip_text_config_from_state

Shapes = Mapping[str, tuple[int, ...]]


def _shapes(sd: Mapping[str, torch.Tensor], prefix: str) -> dict[str, tuple[int, ...]]:
    return {k[len(prefix):]: tuple(v.shape) for k, v in sd.items() if k.startswith(prefix)}


def _count(shapes: Shapes, pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in shapes for m in [rx.match(k)] if m})


def unet_cfg_from_weights(sd: Mapping[str, torch.Tensor], head_channels: int | None = 64) -> dict:
    """A DiffusionUNet block for the `model.*` tensors of `sd`. `head_channels` None: 8 heads (SD1.x)."""
    s = _shapes(sd, 'model.')
    if 'input_blocks.0.0.weight' not in s:
        raise CheckpointError('no UNet weights (model.diffusion_model.input_blocks.0.0.weight) to read sizes from')
    mc, in_ch = s['input_blocks.0.0.weight'][:2]
    blocks = sorted({int(k.split('.')[1]) for k in s if k.startswith('input_blocks.')})
    mults, res, depth, attn_levels, level, count = [], [], [], [], 0, 0
    for i in blocks[1:]:
        if f'input_blocks.{i}.0.op.weight' in s:  # a downsampler closes the level
            res.append(count)
            level, count = level + 1, 0
            continue
        if count == 0:
            mults.append(s[f'input_blocks.{i}.0.in_layers.2.weight'][0] // mc)
            n = _count(s, rf'input_blocks\.{i}\.1\.transformer_blocks\.(\d+)\.')
            depth.append(n)
            if n:
                attn_levels.append(2 ** level)
        count += 1
    res.append(count)
    attn = [k for k in s if k.endswith('attn2.to_k.weight')]
    context = s[attn[0]][1] if attn else 768
    proj = next((v for k, v in s.items() if k.endswith('.proj_in.weight')), (1, 1, 1, 1))
    block = {'NAME': 'DiffusionUNet', 'IN_CHANNELS': in_ch, 'OUT_CHANNELS': s['out.2.weight'][0],
             'MODEL_CHANNELS': mc, 'CHANNEL_MULT': mults, 'NUM_RES_BLOCKS': res[0] if len(set(res)) == 1 else res,
             'ATTENTION_RESOLUTIONS': attn_levels, 'TRANSFORMER_DEPTH': depth, 'CONTEXT_DIM': context,
             'USE_LINEAR_IN_TRANSFORMER': len(proj) == 2,
             'TRANSFORMER_DEPTH_MIDDLE': _count(s, r'middle_block\.1\.transformer_blocks\.(\d+)\.')}
    if head_channels is None:
        block.update(NUM_HEADS=8, NUM_HEAD_CHANNELS=-1)
    else:  # narrower than a head: one head of the layer's width (tiny test models)
        block.update(NUM_HEAD_CHANNELS=min([head_channels] + [mc * m for m, d in zip(mults, depth) if d]))
    if 'label_emb.0.0.weight' in s:
        block.update(NUM_CLASSES='sequential', ADM_IN_CHANNELS=s['label_emb.0.0.weight'][1])
    return block


def vae_cfg_from_weights(sd: Mapping[str, torch.Tensor]) -> dict:
    """An AutoencoderKL block for the `first_stage_model.*` tensors of `sd`."""
    s = _shapes(sd, 'first_stage_model.')
    if 'encoder.conv_in.weight' not in s:
        raise CheckpointError('no VAE weights (first_stage_model.encoder.conv_in.weight) to read sizes from')
    ch = s['encoder.conv_in.weight'][0]
    levels = _count(s, r'encoder\.down\.(\d+)\.')
    mults = [s[f'encoder.down.{i}.block.0.conv1.weight'][0] // ch for i in range(levels)]
    shared = {'CH': ch, 'CH_MULT': mults, 'NUM_RES_BLOCKS': _count(s, r'encoder\.down\.0\.block\.(\d+)\.'),
              'Z_CHANNELS': s['decoder.conv_in.weight'][1], 'IN_CHANNELS': s['encoder.conv_in.weight'][1],
              'OUT_CH': s['decoder.conv_out.weight'][0], 'ATTN_RESOLUTIONS': []}
    return {'NAME': 'AutoencoderKL', 'EMBED_DIM': s['quant_conv.weight'][0] // 2 if 'quant_conv.weight' in s
            else shared['Z_CHANNELS'], 'ENCODER': {'NAME': 'Encoder', **shared},
            'DECODER': {'NAME': 'Decoder', **shared}}


def text_config_from_weights(sd: Mapping[str, torch.Tensor], prefix: str, openclip: bool) -> dict:
    """CLIPTextConfig fields of the text encoder under `prefix` (our names). OpenCLIP towers
    (SD2, SDXL's bigG) use exact GELU and carry a projection."""
    part = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    if not part:
        raise CheckpointError(f"no text-encoder weights under '{prefix}'")
    config = clip_text_config_from_state({k: v for k, v in part.items() if not k.startswith('text_projection')})
    if openclip:
        config['hidden_act'] = 'gelu'
    if 'text_projection.weight' in part:
        config['projection_dim'] = part['text_projection.weight'].shape[0]
    return {k: v for k, v in config.items() if k not in ('architectures', 'model_type')}

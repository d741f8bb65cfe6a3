"""SD3 / SD3.5 from what a user has: a diffusers folder (`transformer/`, `vae/`, CLIP-L
`text_encoder/`, CLIP-bigG `text_encoder_2/`, T5 `text_encoder_3/` (optional), their
tokenizers, `scheduler/`) or Stability's single file (the transformer under
`model.diffusion_model.`, the VAE under `first_stage_model.`)."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch

from ..checkpoint import load_state_dict
from .diffusers_fmt import _read_json
from .flux_folder import component_weights, flow_vae_block, pipeline_class, require_parts
from .mmdit_map import mmdit_from_diffusers
from .vae_map import vae_keymap


def is_sd3_folder(path: str | Path) -> bool:
    return pipeline_class(path).startswith('StableDiffusion3')


def mmdit_cfg(config: Mapping) -> dict:
    """Our MMDiT block for a diffusers SD3Transformer2DModel config.json."""
    patch = config.get('patch_size', 2)
    return {'NAME': 'MMDiT', 'IN_CHANNELS': config.get('in_channels', 16),
            'OUT_CHANNELS': config.get('out_channels') or config.get('in_channels', 16), 'PATCH_SIZE': patch,
            'DEPTH': config['num_layers'], 'NUM_HEADS': config['num_attention_heads'],
            'HIDDEN_SIZE': config['num_attention_heads'] * config['attention_head_dim'],
            'ADM_IN_CHANNELS': config.get('pooled_projection_dim', 2048),
            'CONTEXT_EMBEDDER_CONFIG': {'target': 'torch.nn.Linear',
                                        'params': {'in_features': config.get('joint_attention_dim', 4096)}},
            'QK_NORM': 'rms' if config.get('qk_norm') == 'rms_norm' else None,
            'X_BLOCK_SELF_ATTN_LAYERS': list(config.get('dual_attention_layers') or []),
            'POS_EMBED_MAX_SIZE': config.get('pos_embed_max_size', 192),
            'POS_EMBED_BASE_SIZE': config.get('sample_size', 128) // patch}


def sd3_model_block(folder: str | Path) -> dict:
    """A LatentDiffusionSD3 block whose parts are read off a diffusers SD3 folder."""
    root = require_parts(folder, 'SD3', ('transformer', 'vae', 'text_encoder', 'text_encoder_2', 'tokenizer',
                                         'tokenizer_2'))
    transformer = _read_json(root / 'transformer' / 'config.json')
    vae_config = _read_json(root / 'vae' / 'config.json')
    scheduler = root / 'scheduler' / 'scheduler_config.json'
    shift = _read_json(scheduler).get('shift', 3.0) if scheduler.is_file() else 3.0

    def clip(part: str, tokenizer: str) -> dict:
        return {'NAME': 'FrozenCLIPEmbedder2', 'PRETRAINED_MODEL': str(root / part),
                'TOKENIZER_PATH': str(root / tokenizer)}
    has_t5 = (root / 'text_encoder_3').is_dir() and (root / 'tokenizer_3').is_dir()
    t5 = {'NAME': 'T5EmbedderHF', 'PRETRAINED_MODEL': str(root / 'text_encoder_3'),
          'TOKENIZER_PATH': str(root / 'tokenizer_3'), 'LENGTH': 256, 'CLEAN': 'none'} if has_t5 else None
    return {
        'NAME': 'LatentDiffusionSD3', 'PRETRAINED_MODEL': str(root), 'SCHEDULE_ARGS': {'NAME': 'shifted', 'SHIFT': shift},
        'SCALE_FACTOR': vae_config.get('scaling_factor', 1.5305), 'SHIFT_FACTOR': vae_config.get('shift_factor') or 0.0,
        'SIZE_FACTOR': 2 ** (len(vae_config['block_out_channels']) - 1),
        'DIFFUSION_MODEL': mmdit_cfg(transformer), 'FIRST_STAGE_MODEL': flow_vae_block(vae_config),
        'COND_STAGE_MODEL': {'NAME': 'SD3TextEmbedder', 'CLIP_L': clip('text_encoder', 'tokenizer'),
                             'CLIP_G': clip('text_encoder_2', 'tokenizer_2'), 'T5_XXL': t5,
                             'T5_SHAPE': [256, transformer.get('joint_attention_dim', 4096)]},
    }


def read_sd3_weights(path: str | Path, vae_cfg: Mapping | None = None) -> dict[str, torch.Tensor]:
    """Transformer and VAE weights in our whole-model names from a diffusers SD3 folder or
    Stability's single file (its bundled text encoders are not read: they load from folders)."""
    root = Path(path)
    if root.is_dir():
        return {**component_weights(root, 'transformer', 'model.', mmdit_from_diffusers),
                **component_weights(root, 'vae', 'first_stage_model.', vae_keymap(vae_cfg).to_ours)}
    raw = load_state_dict(root)
    sd = {k.replace('model.diffusion_model.', 'model.', 1): v for k, v in raw.items()
          if k.startswith(('model.diffusion_model.', 'first_stage_model.'))}
    return sd

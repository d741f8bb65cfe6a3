"""FLUX.1 from what a user has: a diffusers folder (`transformer/`, `vae/`, `text_encoder/`
CLIP-L, `text_encoder_2/` T5, their tokenizers, `scheduler/`) or BFL's single file. The
folder's own config.json files give the architecture (any sizes) and its scheduler config
the sampling grid, so no recipe is needed."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch

from ..checkpoint import load_state_dict
from ..errors import CheckpointError
from .configs import vae_cfg_from_diffusers
from .diffusers_fmt import _component_weights, _read_json
from .flux_map import flux_from_diffusers
from .vae_map import vae_keymap


def pipeline_class(path: str | Path) -> str:
    """The `_class_name` of a diffusers folder's model_index.json ('' when there is none)."""
    index = Path(path) / 'model_index.json'
    return str(_read_json(index).get('_class_name', '')) if index.is_file() else ''


def is_flux_folder(path: str | Path) -> bool:
    return pipeline_class(path).startswith('Flux')


def require_parts(folder: str | Path, family: str, parts: tuple[str, ...]) -> Path:
    root = Path(folder)
    for part in parts:
        if not (root / part).is_dir():
            raise CheckpointError(f"'{root}': a {family} folder needs {part}/ (missing)")
    return root


def flow_vae_block(config: Mapping, name: str = 'AutoencoderKL') -> dict:
    """Our 16-channel VAE block for a diffusers AutoencoderKL config.json."""
    return {**vae_cfg_from_diffusers(config), 'NAME': name, 'USE_CONV': bool(config.get('use_quant_conv', False))}


def component_weights(root: Path, part: str, prefix: str, rename) -> dict[str, torch.Tensor]:
    """One diffusers component's weights in our names, under `prefix`."""
    return {f'{prefix}{k}': v for k, v in rename(_component_weights(root / part)).items()}


def flux_backbone_cfg(config: Mapping) -> dict:
    """Our Flux block for a diffusers FluxTransformer2DModel config.json."""
    return {'NAME': 'Flux', 'IN_CHANNELS': config.get('in_channels', 64),
            'OUT_CHANNELS': config.get('out_channels') or config.get('in_channels', 64),
            'HIDDEN_SIZE': config['num_attention_heads'] * config['attention_head_dim'],
            'NUM_HEADS': config['num_attention_heads'], 'AXES_DIM': list(config.get('axes_dims_rope', [16, 56, 56])),
            'VEC_IN_DIM': config.get('pooled_projection_dim', 768), 'CONTEXT_IN_DIM': config.get('joint_attention_dim', 4096),
            'GUIDANCE_EMBED': bool(config.get('guidance_embeds', False)), 'DEPTH': config.get('num_layers', 19),
            'DEPTH_SINGLE_BLOCKS': config.get('num_single_layers', 38)}


def flux_sampler_cfg(config: Mapping) -> dict:
    """Our sampling grid for a diffusers FlowMatchEulerDiscreteScheduler config."""
    return {'NAME': 'FlowMatchFluxShiftScheduler', 'SHIFT': bool(config.get('use_dynamic_shifting', False)),
            'STATIC_SHIFT': float(config.get('shift', 1.0)), 'BASE_SHIFT': config.get('base_shift', 0.5),
            'MAX_SHIFT': config.get('max_shift', 1.15), 'BASE_SEQ_LEN': config.get('base_image_seq_len', 256),
            'MAX_SEQ_LEN': config.get('max_image_seq_len', 4096)}


def flux_model_block(folder: str | Path, t5_length: int | None = None) -> dict:
    """A LatentDiffusionFlux block whose parts are read off a diffusers FLUX folder."""
    root = require_parts(folder, 'FLUX', ('transformer', 'vae', 'text_encoder', 'text_encoder_2', 'tokenizer',
                                          'tokenizer_2'))
    transformer = _read_json(root / 'transformer' / 'config.json')
    vae_config = _read_json(root / 'vae' / 'config.json')
    scheduler = root / 'scheduler' / 'scheduler_config.json'
    vae = flow_vae_block(vae_config, 'AutoencoderKLFlux')
    vae.update({'SCALE_FACTOR': vae_config.get('scaling_factor', 0.3611),
                'SHIFT_FACTOR': vae_config.get('shift_factor', 0.1159) or 0.0})
    # FLUX.1-dev's pipeline pads T5 prompts to 512 tokens, schnell's to 256
    length = t5_length or (512 if transformer.get('guidance_embeds') else 256)
    return {
        'NAME': 'LatentDiffusionFlux', 'PRETRAINED_MODEL': str(root),
        'SIZE_FACTOR': 2 ** (len(vae_config['block_out_channels']) - 1),
        'DIFFUSION': {'NAME': 'FlowMatchDiffusion',
                      'SAMPLER_SCHEDULER': flux_sampler_cfg(_read_json(scheduler) if scheduler.is_file() else {})},
        'DIFFUSION_MODEL': flux_backbone_cfg(transformer), 'FIRST_STAGE_MODEL': vae,
        'COND_STAGE_MODEL': {
            'NAME': 'T5PlusClipFluxEmbedder',
            'T5_MODEL': {'NAME': 'HFEmbedder', 'HF_MODEL_CLS': 'T5EncoderModel', 'MODEL_PATH': str(root / 'text_encoder_2'),
                         'HF_TOKENIZER_CLS': 'T5TokenizerFast', 'TOKENIZER_PATH': str(root / 'tokenizer_2'),
                         'MAX_LENGTH': length, 'CLEAN': 'none'},
            'CLIP_MODEL': {'NAME': 'HFEmbedder', 'HF_MODEL_CLS': 'CLIPTextModel', 'MODEL_PATH': str(root / 'text_encoder'),
                           'HF_TOKENIZER_CLS': 'CLIPTokenizer', 'TOKENIZER_PATH': str(root / 'tokenizer'),
                           'MAX_LENGTH': 77, 'OUTPUT_KEY': 'pooler_output', 'CLEAN': 'none'}},
    }


def read_flux_weights(path: str | Path, vae_cfg: Mapping | None = None) -> dict[str, torch.Tensor]:
    """Transformer and VAE weights in our whole-model names (`model.*`, `first_stage_model.*`)
    from a diffusers FLUX folder or BFL's single file (bare or `model.diffusion_model.` keys)."""
    root = Path(path)
    if root.is_dir():
        return {**component_weights(root, 'transformer', 'model.', flux_from_diffusers),
                **component_weights(root, 'vae', 'first_stage_model.', vae_keymap(vae_cfg).to_ours)}
    raw = load_state_dict(root)
    if any(k.startswith('double_blocks.') for k in raw):
        return {f'model.{k}': v for k, v in raw.items()}
    return {k.replace('model.diffusion_model.', 'model.', 1): v for k, v in raw.items()}

"""Model families as config blocks: one table from which LatentDiffusionXL takes its defaults
and `scepter model info` builds each family. Components carry diffusers' folder names."""
from __future__ import annotations

import copy
from typing import Any

from ..errors import ConfigError, did_you_mean

CLIP_L_PENULTIMATE = {'NAME': 'FrozenCLIPEmbedder', 'LAYER': 'hidden', 'LAYER_IDX': -2, 'INPUT_KEYS': ['prompt']}
BIGG_PENULTIMATE_POOLED = {'NAME': 'FrozenOpenCLIPEmbedder2', 'ARCH': 'ViT-bigG-14', 'LAYER': 'penultimate',
                           'LEGACY': False, 'ALWAYS_RETURN_POOLED': True, 'INPUT_KEYS': ['prompt']}


def size_embedder(key: str) -> dict[str, Any]:
    return {'NAME': 'ConcatTimestepEmbedderND', 'OUT_DIM': 256, 'INPUT_KEYS': [key]}


_SD2_UNET = {'NAME': 'DiffusionUNet', 'NUM_HEAD_CHANNELS': 64, 'USE_LINEAR_IN_TRANSFORMER': True, 'CONTEXT_DIM': 1024}
# TODO(part A): DiffusionUNetXL once registered; DiffusionUNet already builds SGM's layout exactly.
SDXL_UNET = {'NAME': 'DiffusionUNet', 'MODEL_CHANNELS': 320, 'NUM_HEAD_CHANNELS': 64, 'USE_LINEAR_IN_TRANSFORMER': True,
             'CONTEXT_DIM': 2048, 'ATTENTION_RESOLUTIONS': [4, 2], 'CHANNEL_MULT': [1, 2, 4],
             'TRANSFORMER_DEPTH': [1, 2, 10], 'NUM_CLASSES': 'sequential', 'ADM_IN_CHANNELS': 2816}
SDXL_REFINER_UNET = {**SDXL_UNET, 'MODEL_CHANNELS': 384, 'CHANNEL_MULT': [1, 2, 4, 4], 'TRANSFORMER_DEPTH': 4,
                     'CONTEXT_DIM': 1280, 'ADM_IN_CHANNELS': 2560}
SDXL_CONDITIONER = {'NAME': 'GeneralConditioner', 'EMBEDDERS': [
    CLIP_L_PENULTIMATE, BIGG_PENULTIMATE_POOLED, size_embedder('original_size_as_tuple'),
    size_embedder('crop_coords_top_left'), size_embedder('target_size_as_tuple')]}
SDXL_REFINER_CONDITIONER = {'NAME': 'GeneralConditioner', 'EMBEDDERS': [
    BIGG_PENULTIMATE_POOLED, size_embedder('original_size_as_tuple'), size_embedder('crop_coords_top_left'),
    size_embedder('aesthetic_score')]}
VAE = {'NAME': 'AutoencoderKL'}  # SD1.5's, also SD2's and SDXL's architecture

# name -> the model block's keys; `components` maps diffusers' folder names to where the
# block sits in the model (a MODEL key, or COND_STAGE_MODEL.EMBEDDERS.i).
FAMILIES: dict[str, dict[str, Any]] = {
    'sd15': {'model': {'NAME': 'LatentDiffusion', 'DIFFUSION_MODEL': {'NAME': 'DiffusionUNet'},
                       'FIRST_STAGE_MODEL': VAE, 'COND_STAGE_MODEL': {'NAME': 'FrozenCLIPEmbedder'},
                       'SCALE_FACTOR': 0.18215, 'IMAGE_SIZE': [512, 512]},
             'components': {'unet': 'DIFFUSION_MODEL', 'vae': 'FIRST_STAGE_MODEL', 'text_encoder': 'COND_STAGE_MODEL'}},
    'sd21': {'model': {'NAME': 'LatentDiffusion', 'DIFFUSION_MODEL': _SD2_UNET, 'FIRST_STAGE_MODEL': VAE,
                       'COND_STAGE_MODEL': {'NAME': 'FrozenOpenCLIPEmbedder', 'ARCH': 'ViT-H-14',
                                            'LAYER': 'penultimate'},
                       'TOKENIZER': {'NAME': 'OpenClipTokenizer'}, 'SCALE_FACTOR': 0.18215, 'IMAGE_SIZE': [512, 512]},
             'components': {'unet': 'DIFFUSION_MODEL', 'vae': 'FIRST_STAGE_MODEL', 'text_encoder': 'COND_STAGE_MODEL'}},
    'sdxl': {'model': {'NAME': 'LatentDiffusionXL', 'DIFFUSION_MODEL': SDXL_UNET, 'FIRST_STAGE_MODEL': VAE,
                       'COND_STAGE_MODEL': SDXL_CONDITIONER, 'SCALE_FACTOR': 0.13025, 'IMAGE_SIZE': [1024, 1024]},
             'components': {'unet': 'DIFFUSION_MODEL', 'vae': 'FIRST_STAGE_MODEL',
                            'text_encoder': 'COND_STAGE_MODEL.EMBEDDERS.0',
                            'text_encoder_2': 'COND_STAGE_MODEL.EMBEDDERS.1'}},
    'sdxl-refiner': {'model': {'NAME': 'LatentDiffusionXL', 'DIFFUSION_MODEL': SDXL_REFINER_UNET,
                               'FIRST_STAGE_MODEL': VAE, 'COND_STAGE_MODEL': SDXL_REFINER_CONDITIONER,
                               'SCALE_FACTOR': 0.13025, 'IMAGE_SIZE': [1024, 1024]},
                     'components': {'unet': 'DIFFUSION_MODEL', 'vae': 'FIRST_STAGE_MODEL',
                                    'text_encoder_2': 'COND_STAGE_MODEL.EMBEDDERS.0'}},
}
# The flow families: transformer, 16-channel VAE, CLIP-L (+ bigG for SD3) and T5-XXL, as published.
T5_XXL = {'vocab_size': 32128, 'd_model': 4096, 'd_ff': 10240, 'd_kv': 64, 'num_layers': 24, 'num_heads': 64,
          'feed_forward_proj': 'gated-gelu', 'relative_attention_num_buckets': 32}
CLIP_L = {'vocab_size': 49408, 'hidden_size': 768, 'intermediate_size': 3072, 'num_hidden_layers': 12,
          'num_attention_heads': 12, 'projection_dim': 768, 'hidden_act': 'quick_gelu'}
CLIP_BIGG = {'vocab_size': 49408, 'hidden_size': 1280, 'intermediate_size': 5120, 'num_hidden_layers': 32,
             'num_attention_heads': 20, 'projection_dim': 1280, 'hidden_act': 'gelu'}
FLOW_VAE = {'NAME': 'AutoencoderKLFlux', 'ENCODER': {'NAME': 'Encoder', 'Z_CHANNELS': 16},
            'DECODER': {'NAME': 'Decoder', 'Z_CHANNELS': 16}}
T5_BLOCK = {'NAME': 'HFEmbedder', 'HF_MODEL_CLS': 'T5EncoderModel', 'CONFIG': T5_XXL}


def _flux(guidance: bool) -> dict[str, Any]:
    return {'model': {'NAME': 'LatentDiffusionFlux', 'DIFFUSION_MODEL': {'NAME': 'Flux', 'GUIDANCE_EMBED': guidance},
                      'FIRST_STAGE_MODEL': FLOW_VAE, 'IMAGE_SIZE': [1024, 1024],
                      'COND_STAGE_MODEL': {'NAME': 'T5PlusClipFluxEmbedder', 'T5_MODEL': T5_BLOCK, 'CLIP_MODEL': {
                          'NAME': 'HFEmbedder', 'HF_MODEL_CLS': 'CLIPTextModel', 'OUTPUT_KEY': 'pooler_output',
                          'CONFIG': {k: v for k, v in CLIP_L.items() if k != 'projection_dim'}}}},
            'components': {'transformer': 'DIFFUSION_MODEL', 'vae': 'FIRST_STAGE_MODEL',
                           'text_encoder': 'COND_STAGE_MODEL.CLIP_MODEL', 'text_encoder_2': 'COND_STAGE_MODEL.T5_MODEL'}}


def _sd35(mmdit: dict[str, Any]) -> dict[str, Any]:
    return {'model': {'NAME': 'LatentDiffusionSD3', 'DIFFUSION_MODEL': {'NAME': 'MMDiT', 'QK_NORM': 'rms', **mmdit},
                      'FIRST_STAGE_MODEL': {**FLOW_VAE, 'NAME': 'AutoencoderKL', 'EMBED_DIM': 16, 'USE_CONV': False},
                      'IMAGE_SIZE': [1024, 1024],
                      'COND_STAGE_MODEL': {'NAME': 'SD3TextEmbedder', 'T5_XXL': T5_BLOCK,
                                           'CLIP_L': {'NAME': 'FrozenCLIPEmbedder2', 'CONFIG': CLIP_L},
                                           'CLIP_G': {'NAME': 'FrozenCLIPEmbedder2', 'CONFIG': CLIP_BIGG}}},
            'components': {'transformer': 'DIFFUSION_MODEL', 'vae': 'FIRST_STAGE_MODEL',
                           'text_encoder': 'COND_STAGE_MODEL.CLIP_L', 'text_encoder_2': 'COND_STAGE_MODEL.CLIP_G',
                           'text_encoder_3': 'COND_STAGE_MODEL.T5_XXL'}}


FAMILIES.update({'flux-dev': _flux(True), 'flux-schnell': _flux(False),
                 'sd35-large': _sd35({'DEPTH': 38}),
                 'sd35-medium': _sd35({'DEPTH': 24, 'X_BLOCK_SELF_ATTN_LAYERS': list(range(13)),
                                       'POS_EMBED_MAX_SIZE': 384})})
FAMILIES['sd21v'] = {'model': {**FAMILIES['sd21']['model'], 'PARAMETERIZATION': 'v', 'IMAGE_SIZE': [768, 768]},
                     'components': FAMILIES['sd21']['components']}


def family(name: str) -> dict[str, Any]:
    """A copy of a family's entry ({'model': block, 'components': {folder: path}})."""
    if name not in FAMILIES:
        raise ConfigError(f"unknown model family '{name}'." + did_you_mean(name, FAMILIES) +
                          f" Families: {', '.join(FAMILIES)}")
    return copy.deepcopy(FAMILIES[name])


def component_block(model: dict[str, Any], path: str) -> dict[str, Any]:
    """The block at a dotted path (`COND_STAGE_MODEL.EMBEDDERS.1`) of a model block."""
    node: Any = model
    for part in path.split('.'):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node

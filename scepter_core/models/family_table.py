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

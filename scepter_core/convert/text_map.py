"""Text-encoder names of every family, between original single files, ours and diffusers.

Ours hold transformers' CLIP text models: `cond_stage_model.transformer.*` for one encoder
(SD1.x CLIP-L, SD2 OpenCLIP ViT-H), `cond_stage_model.embedders.N.transformer.*` for SDXL's
conditioner (base: 0 CLIP-L, 1 OpenCLIP bigG with projection; refiner: 0 bigG).
Single files keep CLIP-L in transformers' layout (`...transformer.*`) and OpenCLIP towers in
theirs (`...model.*`, converted by openclip_map). SDXL files say `conditioner.` where ours say
`cond_stage_model.`. Diffusers folders: `text_encoder/`, and `text_encoder_2/` for SDXL."""
from __future__ import annotations

from typing import Mapping

import torch

from .openclip_map import hf_to_openclip, openclip_to_hf

OURS_TEXT = 'cond_stage_model.transformer.'
OURS_EMBEDDERS = 'cond_stage_model.embedders.'
SGM_EMBEDDERS = 'conditioner.embedders.'
SD2_OPENCLIP = 'cond_stage_model.model.'
# OpenCLIP-only names: an `embedders.N.transformer.` encoder holding one of these is an OpenCLIP tower.
_OPENCLIP_MARK = 'text_projection.weight'


def _take(sd: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _embedder_ids(sd: Mapping[str, torch.Tensor], prefix: str) -> list[int]:
    return sorted({int(k[len(prefix):].split('.')[0]) for k in sd if k.startswith(prefix)})


def text_to_ours(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The text-encoder tensors of an original single file, in our names; other keys are left out.
    SD1.x `cond_stage_model.transformer.*` is handled by the LDM table, not here."""
    out: dict[str, torch.Tensor] = {}
    openclip = _take(sd, SD2_OPENCLIP)
    if openclip:
        out.update({OURS_TEXT + k: v for k, v in openclip_to_hf(openclip).items()})
    for i in _embedder_ids(sd, SGM_EMBEDDERS):
        src, dst = f'{SGM_EMBEDDERS}{i}.', f'{OURS_EMBEDDERS}{i}.transformer.'
        if any(k.startswith(src + 'model.') for k in sd):
            out.update({dst + k: v for k, v in openclip_to_hf(_take(sd, src + 'model.')).items()})
        else:
            out.update({dst + k: v for k, v in _take(sd, src + 'transformer.').items()})
    return out


def text_to_single_file(sd: Mapping[str, torch.Tensor], openclip: bool = False) -> dict[str, torch.Tensor]:
    """Our text-encoder tensors in original single-file names. `openclip`: the one encoder
    under `cond_stage_model.transformer.` is SD2's OpenCLIP tower (its names do not say so)."""
    out: dict[str, torch.Tensor] = {}
    if openclip:
        out.update({SD2_OPENCLIP + k: v for k, v in hf_to_openclip(_take(sd, OURS_TEXT)).items()})
    for i in _embedder_ids(sd, OURS_EMBEDDERS):
        part = _take(sd, f'{OURS_EMBEDDERS}{i}.transformer.')
        if _OPENCLIP_MARK in part:
            out.update({f'{SGM_EMBEDDERS}{i}.model.{k}': v for k, v in hf_to_openclip(part).items()})
        else:
            out.update({f'{SGM_EMBEDDERS}{i}.transformer.{k}': v for k, v in part.items()})
    return out


def is_text_key(key: str, openclip: bool = False) -> bool:
    """Whether `key` (ours or single-file) belongs to a text encoder that this module converts."""
    return key.startswith((OURS_EMBEDDERS, SGM_EMBEDDERS, SD2_OPENCLIP)) or (openclip and key.startswith(OURS_TEXT))


def diffusers_text_prefixes(components: Mapping[str, object]) -> dict[str, str]:
    """{diffusers folder: our prefix} for the text encoders a folder has: SD `text_encoder`;
    SDXL base `text_encoder` + `text_encoder_2`; the refiner `text_encoder_2` alone."""
    if 'text_encoder_2' not in components:
        return {'text_encoder': OURS_TEXT} if 'text_encoder' in components else {}
    if 'text_encoder' not in components:
        return {'text_encoder_2': f'{OURS_EMBEDDERS}0.transformer.'}
    return {'text_encoder': f'{OURS_EMBEDDERS}0.transformer.', 'text_encoder_2': f'{OURS_EMBEDDERS}1.transformer.'}


def ours_text_folders(sd: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """{diffusers folder: our prefix} for the text encoders present in our state dict."""
    ids = _embedder_ids(sd, OURS_EMBEDDERS)
    if not ids:
        return {'text_encoder': OURS_TEXT} if any(k.startswith(OURS_TEXT) for k in sd) else {}
    if ids == [0]:
        return {'text_encoder_2': f'{OURS_EMBEDDERS}0.transformer.'}
    return {'text_encoder': f'{OURS_EMBEDDERS}0.transformer.', 'text_encoder_2': f'{OURS_EMBEDDERS}1.transformer.'}

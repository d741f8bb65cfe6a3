"""Original LDM / Stable Diffusion single-file names <-> ours.

Ours: `model.*` (UNet), `first_stage_model.*`, `cond_stage_model.transformer.text_model.*`,
`model_ema.*` (UNet names). LDM: `model.diffusion_model.*`, the same VAE and text names
(old files lack `text_model.`), and the EMA copy as `model_ema.diffusion_model<name without
dots>`. Anything else (schedule buffers, EMA counters) keeps its name."""
from __future__ import annotations

from typing import Iterable, Mapping

import torch

from ..errors import CheckpointError
from .keymap import KeyMap, lookup_prefix
from .text_map import is_text_key, text_to_ours, text_to_single_file

LDM_PAIRS = [('model', 'model.diffusion_model'), ('first_stage_model', 'first_stage_model'),
             ('cond_stage_model.transformer.text_model', 'cond_stage_model.transformer.text_model')]
# Files from before transformers added the `text_model` level.
LDM_LEGACY = [('cond_stage_model.transformer.text_model', 'cond_stage_model.transformer')]
LDM_MAP = KeyMap(LDM_PAIRS, extra_theirs=LDM_LEGACY, name='LDM')
EMA_PREFIX, LDM_EMA_PREFIX = 'model_ema.', 'model_ema.diffusion_model'
EMA_COUNTERS = ('model_ema.decay', 'model_ema.num_updates')


def _rename(sd: Mapping[str, torch.Tensor], table: Mapping[str, str]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in sd.items():
        hit = lookup_prefix(table, key) if not key.startswith(EMA_PREFIX) else None
        out[hit[0] if hit else key] = value
    return out


def dotless_table(names: Iterable[str]) -> dict[str, str]:
    """LDM's EMA spelling of each UNet name (dots removed) -> the name. Raises on a collision."""
    table: dict[str, str] = {}
    for name in names:
        flat = name.replace('.', '')
        if table.setdefault(flat, name) != name:
            raise CheckpointError(f"EMA names '{table[flat]}' and '{name}' collide once dots are removed")
    return table


def ldm_to_ours(sd: Mapping[str, torch.Tensor], unet_cfg: Mapping | None = None) -> dict[str, torch.Tensor]:
    """Rename an LDM single-file state dict to ours. EMA names are resolved against the UNet
    names in the same file, else against the UNet built from `unet_cfg` (default SD1.5).
    SD2 / SDXL text encoders (OpenCLIP towers, SDXL's conditioner) go through text_map."""
    out = _rename({k: v for k, v in sd.items() if not is_text_key(k)}, LDM_MAP.to_ours_table)
    out.update(text_to_ours(sd))
    ema = {k[len(LDM_EMA_PREFIX):]: v for k, v in sd.items()
           if k.startswith(LDM_EMA_PREFIX) and k not in EMA_COUNTERS}
    if not ema:
        return out
    for k in [k for k in out if k.startswith(LDM_EMA_PREFIX) and k not in EMA_COUNTERS]:
        del out[k]
    table = dotless_table(k[len('model.'):] for k in out if k.startswith('model.'))
    if any(flat not in table for flat in ema):
        table.update(dotless_table(_unet_names(unet_cfg)))
    unknown = [flat for flat in ema if flat not in table]
    if unknown:
        raise CheckpointError(f'{len(unknown)} EMA tensors match no UNet parameter, e.g. '
                              f'{LDM_EMA_PREFIX}{unknown[0]} (pass the UNet config of this model)')
    out.update({EMA_PREFIX + table[flat]: v for flat, v in ema.items()})
    return out


def ours_to_ldm(sd: Mapping[str, torch.Tensor], openclip: bool = False) -> dict[str, torch.Tensor]:
    """Rename our state dict to LDM / SGM single-file names (the EMA copy included). `openclip`:
    the text encoder is SD2's OpenCLIP tower (written as `cond_stage_model.model.*`)."""
    out = _rename({k: v for k, v in sd.items() if not is_text_key(k, openclip)}, LDM_MAP.to_theirs_table)
    out.update(text_to_single_file(sd, openclip))
    for key in [k for k in out if k.startswith(EMA_PREFIX) and k not in EMA_COUNTERS]:
        out[LDM_EMA_PREFIX + key[len(EMA_PREFIX):].replace('.', '')] = out.pop(key)
    return out


def _unet_names(unet_cfg: Mapping | None) -> list[str]:
    from ..registry import BACKBONES
    from .configs import filled_unet_cfg
    with torch.device('meta'):
        unet = BACKBONES.build(filled_unet_cfg(unet_cfg))
    return list(unet.state_dict())

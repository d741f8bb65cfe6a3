"""Format detection, whole-pipeline loading in our names from any format, and writers."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping

import torch

from ..checkpoint import (PICKLE_SUFFIXES, checkpoint_keys, load_state_dict, save_pickle_checkpoint,
                          save_state_dict)
from ..errors import CheckpointError
from .diffusers_fmt import diffusers_to_ours, read_diffusers
from .ldm import EMA_COUNTERS, EMA_PREFIX, LDM_EMA_PREFIX, ldm_to_ours, ours_to_ldm
from .vae_map import rename_scepter_vae_keys

FORMATS = ('ldm', 'diffusers', 'scepter')


def format_of_keys(keys: Iterable[str], where: str = 'checkpoint') -> str:
    """'ldm' (SD single file, or just its VAE / text parts) or 'scepter' (ours) by key names."""
    keys = list(keys)
    if any(k.startswith(('model.diffusion_model.', LDM_EMA_PREFIX)) for k in keys):
        return 'ldm'
    if any(k.startswith(('model.', 'model_ema.')) for k in keys):
        return 'scepter'
    if any(k.startswith(('first_stage_model.', 'cond_stage_model.')) for k in keys):
        return 'ldm'
    raise CheckpointError(f"'{where}': not a Stable Diffusion checkpoint: no model.diffusion_model.* (SD single "
                          f"file) or model.* (ours) keys; first keys: {', '.join(keys[:3]) or 'none'}")


def detect_format(path: str | os.PathLike) -> str:
    """'diffusers' for a diffusers folder, else 'ldm' or 'scepter' from the file's key names."""
    p = Path(path)
    if p.is_dir():
        if (p / 'model_index.json').is_file() or any((p / d).is_dir() for d in ('unet', 'vae', 'text_encoder')):
            return 'diffusers'
        raise CheckpointError(f"'{path}': a folder, but not a diffusers one (no model_index.json, unet/ or vae/)")
    return format_of_keys(checkpoint_keys(p), str(path))


def select_ema(sd: Mapping[str, torch.Tensor], where: str = 'checkpoint') -> dict[str, torch.Tensor]:
    """`sd` with the UNet (`model.*`) replaced by its EMA copy (`model_ema.*`)."""
    ema = {'model.' + k[len(EMA_PREFIX):]: v for k, v in sd.items()
           if k.startswith(EMA_PREFIX) and k not in EMA_COUNTERS}
    if not ema:
        raise CheckpointError(f"'{where}': EMA weights were asked for but the file has none (no model_ema.*)")
    return {**sd, **ema}


def load_pipeline_state(path: str | os.PathLike, use_ema: bool = False,
                        unet_cfg: Mapping | None = None) -> dict[str, torch.Tensor]:
    """Whole-model weights in our names from an SD single file, a diffusers folder or ours.
    `use_ema` puts the EMA copy in place of the UNet. `unet_cfg` is only needed to read the
    EMA names of a non-SD1.5 LDM file that lacks the regular UNet weights."""
    path = str(path)
    if os.path.isdir(path):
        fmt = detect_format(path)
        sd = diffusers_to_ours(*read_diffusers(path))
    else:
        sd = load_state_dict(path)
        fmt = format_of_keys(sd, path)
        sd = ldm_to_ours(sd, unet_cfg) if fmt == 'ldm' else sd
        sd = rename_scepter_vae_keys(sd, prefix='first_stage_model.')
    if use_ema:
        if fmt == 'diffusers':
            raise CheckpointError(f"'{path}': a diffusers folder holds no EMA copy (drop --use-ema / USE_EMA)")
        sd = select_ema(sd, path)
    return sd


def check_against_config(sd: Mapping[str, torch.Tensor], unet_cfg: Mapping | None = None,
                         vae_cfg: Mapping | None = None) -> None:
    """Raise a ConfigError naming the first UNet / VAE tensor whose name or shape does not fit
    the architecture of `unet_cfg` / `vae_cfg` (None = SD1.5)."""
    from ..errors import ConfigError
    from ..registry import BACKBONES, MODELS
    from .configs import filled_unet_cfg, filled_vae_cfg
    for prefix, registry, block in (('model.', BACKBONES, filled_unet_cfg(unet_cfg)),
                                    ('first_stage_model.', MODELS, filled_vae_cfg(vae_cfg))):
        have = {k[len(prefix):]: tuple(v.shape) for k, v in sd.items() if k.startswith(prefix)}
        if not have:
            continue
        with torch.device('meta'):
            want = {k: tuple(v.shape) for k, v in registry.build(block).state_dict().items()}
        bad = next((k for k in sorted(set(have) | set(want)) if have.get(k) != want.get(k)), None)
        if bad is not None:
            raise ConfigError(f"weights do not fit the {block.NAME} config: '{prefix}{bad}' is "
                              f"{have.get(bad, 'absent')} in the file but {want.get(bad, 'absent')} from the "
                              f"config; pass the recipe of this model (--cfg)")


def drop_ema(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`sd` without the EMA copy and its counters."""
    return {k: v for k, v in sd.items() if not k.startswith(EMA_PREFIX)}


def save_ldm(sd: Mapping[str, torch.Tensor], path: str | os.PathLike,
             metadata: Mapping[str, str] | None = None, openclip: bool = False) -> None:
    """Write our state dict as an SD single file: safetensors, or `{'state_dict': ...}` for .ckpt/.pt.
    `openclip`: the text encoder is SD2's OpenCLIP tower (written as `cond_stage_model.model.*`)."""
    ldm = ours_to_ldm(sd, openclip)
    if str(path).endswith(PICKLE_SUFFIXES):
        save_pickle_checkpoint(ldm, path)
    else:
        save_state_dict(ldm, path, metadata)


def save_ours(sd: Mapping[str, torch.Tensor], path: str | os.PathLike,
              metadata: Mapping[str, str] | None = None) -> None:
    """Write our state dict as safetensors (our names)."""
    save_state_dict(sd, path, metadata)

"""`scepter convert`'s work: read SD weights in any format (or a LoRA run's checkpoint), fold
in LoRA files, write them as an original single file, a diffusers folder or our checkpoint.

Above the rest of convert/ and above inference.py (merging LoRA builds the model), so the
package's __init__ does not import it: `from scepter_core.convert.run import convert_weights`."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..config import Config
from ..errors import ConfigError
from ..imports import import_user_code, recipe_imports
from ..inference import adapter_checkpoint, merged_weights
from .configs import find_model_blocks, unet_cfg_from_diffusers, vae_cfg_from_diffusers
from .diffusers_fmt import read_diffusers_configs, save_diffusers
from .formats import FORMATS, check_against_config, detect_format, drop_ema, load_pipeline_state, save_ldm, save_ours


@dataclass
class Converted:
    """What `convert_weights` read and wrote."""
    source_format: str                 # ldm, diffusers, scepter or 'LoRA run'
    tensors: int
    written: list[Path] = field(default_factory=list)
    merged: list[str] = field(default_factory=list)   # the LoRA specs folded in ('its adapters' for a run)


def _recipe_blocks(cfg_path: str, trust_imports: bool) -> tuple[dict | None, dict | None]:
    recipe = Config.load(cfg_path)
    if trust_imports:  # converting weights runs no user code unless asked (see imports.py)
        import_user_code(recipe_imports(recipe), base_dir=cfg_path)
    unet_cfg, vae_cfg = find_model_blocks(recipe)
    if unet_cfg is None and vae_cfg is None:
        raise ConfigError(f"--cfg '{cfg_path}': no DIFFUSION_MODEL or FIRST_STAGE_MODEL block (looked under "
                          f"SOLVER.MODEL, MODEL and the top level)")
    return unet_cfg, vae_cfg


def convert_weights(src: str, dst: str, to: str, use_ema: bool = False, cfg_path: str | None = None,
                    merge_lora: list[str] = (), logger: logging.Logger | None = None,
                    trust_imports: bool = False) -> Converted:
    """Convert `src` (format detected) to `to` at `dst`. `cfg_path`: the recipe that describes
    the model (default: SD1.5's, or a diffusers source's own configs); `merge_lora`: LoRA
    files (`PATH[:SCALE]`) merged into the weights, as is a LoRA run's checkpoint given as `src`."""
    if to not in FORMATS:
        raise ConfigError(f"--to: '{to}' is not one of {', '.join(FORMATS)}")
    unet_cfg, vae_cfg = _recipe_blocks(cfg_path, trust_imports) if cfg_path else (None, None)
    text_cfg = None
    merge = list(merge_lora)
    lora_run = adapter_checkpoint(src) is not None
    fmt = 'LoRA run' if lora_run else detect_format(src)
    if fmt == 'diffusers':
        configs = read_diffusers_configs(src)
        unet_cfg = unet_cfg or (unet_cfg_from_diffusers(configs['unet']) if configs.get('unet') else None)
        vae_cfg = vae_cfg or (vae_cfg_from_diffusers(configs['vae']) if configs.get('vae') else None)
        text_cfg = configs.get('text_encoder') or None
    if merge or lora_run:  # build the model, add the adapters, fold them in
        blocks = None if cfg_path or fmt != 'diffusers' else \
            {k: v for k, v in (('DIFFUSION_MODEL', unet_cfg), ('FIRST_STAGE_MODEL', vae_cfg)) if v}
        sd, recipe = merged_weights(src, merge, cfg_path=cfg_path, blocks=blocks, use_ema=use_ema, logger=logger,
                                    trust_imports=trust_imports)
        if unet_cfg is None and vae_cfg is None:
            unet_cfg, vae_cfg = find_model_blocks(recipe)
    else:
        sd = load_pipeline_state(src, use_ema=use_ema, unet_cfg=unet_cfg)
        if use_ema:
            sd = drop_ema(sd)
    out = Path(dst)
    if to == 'diffusers':
        check_against_config(sd, unet_cfg, vae_cfg)
        tokenizer = Path(src) / 'tokenizer' if fmt == 'diffusers' else None
        written = save_diffusers(sd, out, unet_cfg, vae_cfg, text_cfg,
                                 tokenizer_dir=tokenizer if tokenizer and tokenizer.is_dir() else None)
    else:
        meta = {'source': os.path.basename(src.rstrip('/'))}
        if merge:
            meta['merged_lora'] = ' '.join(merge)
        if to == 'ldm':  # an SD2 file's text encoder goes back to OpenCLIP's names
            from ..families import detect_family
            save_ldm(sd, out, meta, openclip=fmt == 'ldm' and detect_family(src) == 'sd21')
        else:
            save_ours(sd, out, meta)
        written = [out]
    return Converted(fmt, len(sd), [Path(p) for p in written], merge or (['its adapters'] if lora_run else []))

"""`scepter convert`'s work: read SD weights in any format (or a LoRA run's checkpoint), fold
in LoRA files, write them as an original single file, a diffusers folder or our checkpoint;
or write a LoRA run's adapters as a kohya / diffusers-peft / ComfyUI LoRA file.

Above the rest of convert/ and above inference.py (merging LoRA builds the model), so the
package's __init__ does not import it: `from scepter_core.convert.run import convert_weights`."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from typing import Any

import torch

from ..config import Config
from ..errors import ConfigError
from ..imports import import_user_code, recipe_imports
from ..inference import adapter_checkpoint, merged_weights
from .configs import find_model_blocks, unet_cfg_from_diffusers, vae_cfg_from_diffusers
from .diffusers_fmt import TEXT_CLASSES, read_diffusers_configs, save_diffusers
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
                    base: str | None = None, trust_imports: bool = False) -> Converted:
    """Convert `src` (format detected) to `to` at `dst`. `cfg_path`: the recipe that describes
    the model (default: SD1.5's, or a diffusers source's own configs); `merge_lora`: LoRA
    files (`PATH[:SCALE]`) merged into the weights, as is a LoRA run's checkpoint given as `src`.
    `to` kohya / peft / comfy: `src`'s adapters as a LoRA file (export_lora; `base` for a file)."""
    if to in LORA_FORMATS:
        return export_lora(src, dst, to, base=base, cfg_path=cfg_path, logger=logger, trust_imports=trust_imports)
    if to not in FORMATS + LORA_FORMATS:
        raise ConfigError(f"--to: '{to}' is not one of {', '.join(FORMATS + LORA_FORMATS)}")
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
    recipe = None
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
    if to == 'diffusers' and any(k.startswith(SDXL_TEXT) for k in sd):
        recipe = recipe or _source_recipe(src, fmt, cfg_path)
        unet_cfg, vae_cfg = find_model_blocks(recipe)
        check_against_config(sd, unet_cfg, vae_cfg)
        written = save_diffusers(sd, out, unet_cfg, vae_cfg, **sdxl_folder_parts(recipe, src if fmt == 'diffusers'
                                                                                   else None), logger=logger)
    elif to == 'diffusers':
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


SDXL_TEXT = 'cond_stage_model.embedders.'
LORA_FORMATS = ('kohya', 'peft', 'comfy')


def _source_recipe(src: str, fmt: str, cfg_path: str | None) -> Config:
    """The recipe that describes SDXL weights at `src`: --cfg, the one saved beside our
    checkpoint, or the family's, read off a diffusers folder's configs or a single file's keys."""
    from ..families import recipe_for
    from ..inference import find_config
    beside = find_config(src) if fmt == 'scepter' else None
    path = cfg_path or beside
    return Config.load(path) if path else recipe_for(src)


def sdxl_folder_parts(recipe: Config, source_folder: str | None = None) -> dict[str, Any]:
    """save_diffusers' SDXL arguments from the recipe's model (built on the meta device): each
    text encoder's CLIPTextConfig, the size-embedding width, the latent scale, the tokenizers
    (the source folder's, the recipe's TOKENIZER_PATH, else the packaged CLIP vocabulary;
    tokenizer_2 pads with '!', id 0, as OpenCLIP does)."""
    from ..models.tokenizers.clip_tokenizer import PACKAGED_VOCAB
    from ..registry import MODELS
    from ..tuners.formats import text_encoders
    block = Config((recipe.get_path('SOLVER.MODEL') or recipe.get('MODEL')).to_dict())
    block['PRETRAINED_MODEL'] = None
    with torch.device('meta'):
        model = MODELS.build(block)
    out: dict[str, Any] = {'scaling_factor': float(block.get('SCALE_FACTOR') or 0.13025)}
    dims = [e.outdim for e in model.cond_stage_model.embedders if hasattr(e, 'outdim')]
    out['time_embed_dim'] = dims[0] if dims else 256
    for folder, module in text_encoders(model).values():
        config = getattr(module, 'text_model', module).config.to_dict()
        config['architectures'] = [TEXT_CLASSES[folder]]
        out['text_cfg' if folder == 'text_encoder' else 'text_cfg_2'] = config
    for arg, name in (('tokenizer_dir', 'tokenizer'), ('tokenizer_2', 'tokenizer_2')):
        encoder = 'text_cfg' if name == 'tokenizer' else 'text_cfg_2'
        if encoder not in out:
            continue
        given = Path(source_folder) / name if source_folder else None
        if given is not None and given.is_dir():
            out[arg] = given
        else:
            from transformers import CLIPTokenizer
            out[arg] = CLIPTokenizer.from_pretrained(str(PACKAGED_VOCAB), **({'pad_token': '!'} if arg == 'tokenizer_2'
                                                                            else {}))
    return out


def export_lora(src: str, dst: str, to: str, base: str | None = None, cfg_path: str | None = None,
                logger: logging.Logger | None = None, trust_imports: bool = False) -> Converted:
    """Write adapters as a LoRA file of another tool: `kohya` (kohya / A1111; SDXL with
    `lora_te1_` / `lora_te2_`), `peft` (diffusers' load_lora_weights layout) or `comfy`
    (FLUX / SD3). `src`: a LoRA run (its recipe builds the base model), or with `base` any LoRA
    file we read, on that base model."""
    from ..inference import build_model
    from ..tuners import load_adapter, model_lora_state
    from ..tuners.formats import export_comfy, export_kohya, export_peft_diffusers
    if base is None and adapter_checkpoint(src) is None:
        raise ConfigError(f"'{src}': --to {to} writes LoRA adapters; SRC must be a LoRA run or LoRA file "
                          f'(with --base BASE for a file without a recipe beside it)')
    model, _ = build_model(base or src, cfg_path, logger=logger, trust_imports=trust_imports)
    if base is not None:
        load_adapter(model, src, logger=logger)
    writer = {'kohya': export_kohya, 'peft': export_peft_diffusers, 'comfy': export_comfy}[to]
    return Converted('LoRA run' if base is None else 'LoRA file', len(model_lora_state(model).tensors),
                     [Path(writer(model, dst))])

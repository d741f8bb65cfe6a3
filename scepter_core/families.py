"""Model families (SD1.5, SD2.x, SDXL base and refiner): which one a diffusers folder or an
original single file holds, and the recipe that runs it when no recipe comes with it.

A diffusers folder describes itself: the recipe is read off its `config.json` files (any
sizes) and its scheduler config (prediction type, betas, spacing). A single file's family
comes from its key names; its architecture is the family's published one."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .config import Config
from .errors import CheckpointError, ConfigError

# Default sampling size (pixels) per family.
DEFAULT_SIZE = {'sd15': 512, 'sd21': 512, 'sd21v': 768, 'sdxl': 1024, 'sdxl-refiner': 1024}
PREDICTION = {'epsilon': 'eps', 'v_prediction': 'v', 'sample': 'x0'}
SCHEDULES = {'scaled_linear': 'scaled_linear', 'linear': 'linear', 'squaredcos_cap_v2': 'cosine'}
# CLIPTextConfig fields a config.json carries that are bookkeeping, not architecture.
_TEXT_SKIP = ('architectures', 'model_type', 'transformers_version', '_name_or_path', 'torch_dtype', 'dtype')
SD15_RECIPE = Path(__file__).parent / 'assets' / 'sd15_inference.yaml'


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except ValueError as e:
        raise CheckpointError(f"'{path}': not valid JSON ({e})") from e


def _folder_configs(root: Path) -> dict[str, dict]:
    parts = ('unet', 'vae', 'text_encoder', 'text_encoder_2')
    out = {p: _json(root / p / 'config.json') for p in parts if (root / p / 'config.json').is_file()}
    out['scheduler'] = _json(root / 'scheduler' / 'scheduler_config.json')
    return out


def family_of_folder(configs: dict[str, dict], where: str | os.PathLike = 'diffusers folder') -> str:
    """The family of a diffusers folder (`where`, for errors) from its config.json files."""
    unet = configs.get('unet') or {}
    if not unet:
        raise CheckpointError(f"'{where}': a diffusers folder without unet/config.json (found: "
                              f"{', '.join(sorted(p for p in configs if configs[p])) or 'no config.json'}); "
                              f'cannot tell the model family')
    if unet.get('addition_embed_type') == 'text_time':
        return 'sdxl' if 'text_encoder' in configs else 'sdxl-refiner'
    text = configs.get('text_encoder') or {}
    if unet.get('use_linear_projection') or text.get('hidden_act') == 'gelu':  # OpenCLIP ViT-H: SD2
        return 'sd21v' if (configs.get('scheduler') or {}).get('prediction_type') == 'v_prediction' else 'sd21'
    return 'sd15'


def family_of_keys(keys: list[str]) -> str:
    """The family of an original single file from its key names (SD2's 512 and 768-v files have
    the same names: 'sd21' is assumed; the v variant needs PARAMETERIZATION v and its size)."""
    if any(k.startswith(('conditioner.embedders.1.', 'cond_stage_model.embedders.1.')) for k in keys):
        return 'sdxl'  # SGM's names, or ours
    if any(k.startswith(('conditioner.embedders.0.model.', 'cond_stage_model.embedders.0.')) for k in keys):
        return 'sdxl-refiner'
    if any(k.startswith('cond_stage_model.model.') for k in keys):
        return 'sd21'
    return 'sd15'


def detect_family(path: str | os.PathLike) -> str:
    """'sd15', 'sd21', 'sd21v', 'sdxl' or 'sdxl-refiner' for a diffusers folder or a single file."""
    p = Path(path)
    if p.is_dir():
        return family_of_folder(_folder_configs(p), p)
    from .checkpoint import checkpoint_keys
    return family_of_keys(list(checkpoint_keys(p)))


# ---- recipes from a diffusers folder ------------------------------------------------------

def _text_block(config: dict) -> dict:
    from transformers import CLIPTextConfig
    known = CLIPTextConfig().to_dict()
    return {k: v for k, v in config.items() if k in known and k not in _TEXT_SKIP}


def _schedule(scheduler: dict, where: str) -> dict:
    if scheduler.get('trained_betas') is not None:
        raise ConfigError(f"'{where}': trained_betas (a beta list) is not supported; use beta_schedule")
    name = scheduler.get('beta_schedule', 'scaled_linear')
    if name not in SCHEDULES:
        raise ConfigError(f"'{where}': beta_schedule {name!r} is not one of {', '.join(SCHEDULES)}")
    prediction = scheduler.get('prediction_type', 'epsilon')
    if prediction not in PREDICTION:
        raise ConfigError(f"'{where}': prediction_type {prediction!r} is not one of {', '.join(PREDICTION)}")
    args = {'NAME': SCHEDULES[name]}
    if name != 'squaredcos_cap_v2':
        args.update(BETA_MIN=scheduler.get('beta_start', 0.00085), BETA_MAX=scheduler.get('beta_end', 0.012))
    return {'PARAMETERIZATION': PREDICTION[prediction], 'TIMESTEPS': scheduler.get('num_train_timesteps', 1000),
            'SCHEDULE_ARGS': args, 'ZERO_TERMINAL_SNR': bool(scheduler.get('rescale_betas_zero_snr', False))}


def _tokenizer(root: Path, name: str) -> str | None:
    return str(root / name) if (root / name).is_dir() else None


def refiner_model(text: dict, time_dim: int, aesthetic: bool = True, force_zeros: bool = False) -> dict[str, Any]:
    """The SDXL refiner's model keys: LatentDiffusionXL over a conditioner of OpenCLIP bigG alone
    (penultimate states + pooled projection, `text`: its CLIPTextConfig fields), then the
    original size, the crop and the aesthetic score (`aesthetic` false: the target size), each
    value embedded in `time_dim` features, as diffusers' StableDiffusionXLImg2ImgPipeline."""
    from .models.family_table import BIGG_PENULTIMATE_POOLED, size_embedder
    last = 'aesthetic_score' if aesthetic else 'target_size_as_tuple'
    sizes = [{**size_embedder(k), 'OUT_DIM': time_dim} for k in ('original_size_as_tuple', 'crop_coords_top_left', last)]
    embedders = [{**BIGG_PENULTIMATE_POOLED, 'CONFIG': text}, *sizes]
    return {'NAME': 'LatentDiffusionXL', 'TOKENIZER': None, 'FORCE_ZEROS_FOR_EMPTY_PROMPT': force_zeros,
            'COND_STAGE_MODEL': {'NAME': 'GeneralConditioner', 'EMBEDDERS': embedders}}


def flow_recipe(folder: str | os.PathLike) -> Config | None:
    """The recipe of a diffusers FLUX or SD3 folder (its parts, the pipeline's sampling
    defaults), or None for anything else."""
    from .convert.flux_folder import flux_model_block, is_flux_folder
    from .convert.sd3_folder import is_sd3_folder, sd3_model_block
    if is_flux_folder(folder):
        block = flux_model_block(folder)
        dev = block['DIFFUSION_MODEL']['GUIDANCE_EMBED']
        steps, scale, family = (28, 3.5, 'flux-dev') if dev else (4, 0.0, 'flux-schnell')
    elif is_sd3_folder(folder):
        block, steps, scale, family = sd3_model_block(folder), 28, 7.0, 'sd3'
    else:
        return None
    args = {'SAMPLER': 'flow_euler', 'SAMPLE_STEPS': steps, 'GUIDE_SCALE': scale, 'IMAGE_SIZE': [1024, 1024],
            'SEED': 2024}
    return Config({'FAMILY': family, 'SOLVER': {'NAME': 'LatentDiffusionSolver', 'MODEL': block, 'SAMPLE_ARGS': args}})


def sdxl_blocks(unet: dict, texts: list[tuple[dict, str | None]], time_dim: int) -> dict[str, Any]:
    """LatentDiffusionXL's blocks for an SDXL UNet block and its text encoders ((CLIPTextConfig
    fields, tokenizer directory or None) each; the last one is bigG with projection): Scepter's
    GeneralConditioner of the family table (CLIP-L penultimate, bigG penultimate + pooled, one
    size embedding per add_time_ids pair; the refiner's: `refiner_model`)."""
    from .models.family_table import SDXL_CONDITIONER
    embedders = [dict(block) for block in SDXL_CONDITIONER['EMBEDDERS']]
    text_blocks = [b for b in embedders if b['NAME'] != 'ConcatTimestepEmbedderND']
    if len(text_blocks) != len(texts):
        raise CheckpointError(f"an SDXL model needs {len(text_blocks)} text "
                              f'encoder(s), found {len(texts)}')
    for block, (config, tokenizer) in zip(text_blocks, texts):
        block.update(CONFIG=config, MAX_LENGTH=min(77, config.get('max_position_embeddings', 77)),
                     TOKENIZER_PATH=tokenizer)
    for block in embedders:
        if block['NAME'] == 'ConcatTimestepEmbedderND':
            block['OUT_DIM'] = time_dim
    head = unet.get('NUM_HEAD_CHANNELS', -1)  # DiffusionUNetXL's NUM_HEADS_CHANNELS wins over it: say it there
    return {'NAME': 'LatentDiffusionXL', 'DIFFUSION_MODEL': {**unet, 'NAME': 'DiffusionUNetXL', 'NUM_HEADS_CHANNELS': head},
            'COND_STAGE_MODEL': {'NAME': 'GeneralConditioner', 'EMBEDDERS': embedders}, 'TOKENIZER': None}


def folder_recipe(path: str | os.PathLike) -> Config:
    """The recipe that runs the diffusers folder `path` as diffusers' own pipeline would."""
    from .convert.configs import unet_cfg_from_diffusers, vae_cfg_from_diffusers
    flow = flow_recipe(path)
    if flow is not None:
        return flow
    root = Path(path)
    configs = _folder_configs(root)
    family = family_of_folder(configs, root)
    for part in ('vae',) + (('text_encoder_2',) if family.startswith('sdxl') else ('text_encoder',)):
        if part not in configs:
            raise CheckpointError(f"'{root}': a {family} diffusers folder needs {part}/config.json")
    unet, vae = configs['unet'], configs['vae']
    size_factor = 2 ** (len(vae['block_out_channels']) - 1)
    size = unet.get('sample_size')
    size = size * size_factor if isinstance(size, int) else DEFAULT_SIZE[family]
    model: dict[str, Any] = {
        'NAME': 'LatentDiffusion', **_schedule(configs['scheduler'], f'{root}/scheduler'),
        'SCALE_FACTOR': vae.get('scaling_factor', 0.18215), 'SIZE_FACTOR': size_factor, 'IMAGE_SIZE': [size, size],
        'DIFFUSION_MODEL': unet_cfg_from_diffusers(unet), 'FIRST_STAGE_MODEL': vae_cfg_from_diffusers(vae)}
    if family == 'sdxl-refiner':
        index = _json(root / 'model_index.json')
        model.update(refiner_model(_text_block(configs['text_encoder_2']), unet.get('addition_time_embed_dim', 256),
                                   index.get('requires_aesthetics_score', True),
                                   index.get('force_zeros_for_empty_prompt', False)))
    elif family == 'sdxl':
        texts = [(_text_block(configs[part]), _tokenizer(root, 'tokenizer' if part == 'text_encoder' else 'tokenizer_2'))
                 for part in ('text_encoder', 'text_encoder_2') if part in configs]
        model.update(sdxl_blocks(model['DIFFUSION_MODEL'], texts, unet.get('addition_time_embed_dim', 256)),
                     FORCE_ZEROS_FOR_EMPTY_PROMPT=_json(root / 'model_index.json').get(
                         'force_zeros_for_empty_prompt', True))
    else:  # SD1.x: CLIP-L's last state; SD2 folders hold the OpenCLIP tower cut at its penultimate layer
        text = _text_block(configs['text_encoder'])
        model.update(COND_STAGE_MODEL={'NAME': 'FrozenCLIPEmbedder', 'CONFIG': text, 'LAYER': 'last'},
                     TOKENIZER={'NAME': 'ClipTokenizer', 'PRETRAINED_PATH': _tokenizer(root, 'tokenizer'),
                                'LENGTH': min(77, text.get('max_position_embeddings', 77))})
    spacing = configs['scheduler'].get('timestep_spacing', 'leading')
    sample = {'SAMPLER': 'ddim', 'SAMPLE_STEPS': 50, 'SEED': 2023, 'GUIDE_SCALE': 5.0 if family.startswith('sdxl')
              else 7.5, 'GUIDE_RESCALE': 0.0, 'DISCRETIZATION': spacing, 'IMAGE_SIZE': [size, size]}
    return Config({'FAMILY': family, 'SOLVER': {'NAME': 'LatentDiffusionSolver', 'MODEL': model,
                                                'SAMPLE_ARGS': sample}})


# ---- recipes from an original single file -----------------------------------------------

def _meta_state(path: Path) -> dict:
    """The file's tensors as meta tensors of their shapes (safetensors: read from the header only)."""
    import torch

    from .checkpoint import SAFETENSORS_SUFFIXES, load_state_dict, read_safetensors_header
    if str(path).endswith(SAFETENSORS_SUFFIXES):
        header, _ = read_safetensors_header(path)
        return {k: torch.empty(v['shape'], device='meta') for k, v in header.items() if k != '__metadata__'}
    return {k: v.to('meta') for k, v in load_state_dict(path).items()}


def file_recipe(path: str | os.PathLike) -> Config:
    """The recipe for an original LDM / SGM single file (or our checkpoint without its recipe):
    family from its names, sizes from its shapes (arch_from_weights), sampling as the family's
    reference (scaled-linear betas, eps)."""
    from .convert.arch_from_weights import text_config_from_weights, unet_cfg_from_weights, vae_cfg_from_weights
    from .convert.formats import format_of_keys
    from .convert.ldm import ldm_to_ours
    raw = _meta_state(Path(path))
    family = family_of_keys(list(raw))
    sd = raw if format_of_keys(raw, str(path)) == 'scepter' else ldm_to_ours(raw)  # ours: already our names
    unet, vae = unet_cfg_from_weights(sd, None if family == 'sd15' else 64), vae_cfg_from_weights(sd)
    size_factor, size = 2 ** (len(vae['ENCODER']['CH_MULT']) - 1), DEFAULT_SIZE[family]
    model: dict[str, Any] = {
        'NAME': 'LatentDiffusion', 'PARAMETERIZATION': 'eps', 'TIMESTEPS': 1000,
        'SCHEDULE_ARGS': {'NAME': 'scaled_linear', 'BETA_MIN': 0.00085, 'BETA_MAX': 0.012},
        'SCALE_FACTOR': 0.13025 if family.startswith('sdxl') else 0.18215, 'SIZE_FACTOR': size_factor,
        'IMAGE_SIZE': [size, size], 'DIFFUSION_MODEL': unet, 'FIRST_STAGE_MODEL': vae}
    if family == 'sdxl-refiner':  # bigG (embedder 0) + original size, crop, aesthetic score
        text = text_config_from_weights(sd, 'cond_stage_model.embedders.0.transformer.', openclip=True)
        model.update(refiner_model(text, (unet['ADM_IN_CHANNELS'] - text['projection_dim']) // 5))
    elif family == 'sdxl':
        texts = [(text_config_from_weights(sd, f'cond_stage_model.embedders.{i}.transformer.',
                                           openclip=f'cond_stage_model.embedders.{i}.transformer.text_projection.weight'
                                           in sd), None) for i in range(2)]
        pooled = texts[-1][0]['projection_dim']
        model.update(sdxl_blocks(unet, texts, (unet['ADM_IN_CHANNELS'] - pooled) // 6))
    else:  # SD2: the OpenCLIP tower's penultimate layer, final norm applied (its projection is unused)
        sd2 = family == 'sd21'
        text = text_config_from_weights(sd, 'cond_stage_model.transformer.', openclip=sd2)
        layer = {'LAYER': 'hidden', 'LAYER_IDX': -2, 'USE_FINAL_LAYER_NORM': True} if sd2 else {'LAYER': 'last'}
        model.update(COND_STAGE_MODEL={'NAME': 'FrozenCLIPEmbedder', 'CONFIG': text, **layer},
                     TOKENIZER={'NAME': 'ClipTokenizer', 'LENGTH': min(77, text['max_position_embeddings'])},
                     IGNORE_KEYS=['cond_stage_model.transformer.text_projection'] if sd2 else [])
    sample = {'SAMPLER': 'ddim', 'SAMPLE_STEPS': 50, 'SEED': 2023,
              'GUIDE_SCALE': 5.0 if family.startswith('sdxl') else 7.5,
              'GUIDE_RESCALE': 0.0, 'DISCRETIZATION': 'trailing', 'IMAGE_SIZE': [size, size]}
    return Config({'FAMILY': family, 'SOLVER': {'NAME': 'LatentDiffusionSolver', 'MODEL': model,
                                                'SAMPLE_ARGS': sample}})


def recipe_for(path: str | os.PathLike) -> Config:
    """The recipe for weights that come without one: read off a diffusers folder or an original
    single file; a remote URI gets the built-in SD1.5 recipe."""
    if '://' in str(path):
        return Config.load(SD15_RECIPE)
    return folder_recipe(path) if Path(path).is_dir() else file_recipe(path)

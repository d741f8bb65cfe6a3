"""Diffusers folders (`unet/`, `vae/`, `text_encoder/`, `tokenizer/`, `model_index.json`)
<-> our state dict, and a writer that diffusers and transformers can `from_pretrained`."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Mapping

import torch

from ..checkpoint import atomic_write, load_state_dict, save_state_dict
from ..errors import CheckpointError
from .configs import (SD_SCALE_FACTOR, clip_text_config_from_state, diffusers_unet_config,
                      diffusers_vae_config, unet_cfg_from_diffusers, vae_cfg_from_diffusers)
from .keymap import KeyMap
from .text_map import diffusers_text_prefixes, ours_text_folders
from .unet_map import unet_keymap
from .vae_map import vae_keymap

TEXT_PREFIX = 'cond_stage_model.transformer.'
# CLIPTextModel weights sit under `text_model.` in hub folders (transformers < 5); transformers
# 5 saves them without it. Both are read; `text_model.` is written, which both versions load.
TEXT_MAP = KeyMap([('text_model', 'text_model'), ('text_projection', 'text_projection')], name='text encoder',
                  extra_theirs=[(f'text_model.{m}', m) for m in ('embeddings', 'encoder', 'final_layer_norm')])
WEIGHT_NAMES = ('diffusion_pytorch_model.safetensors', 'model.safetensors', 'diffusion_pytorch_model.bin',
                'pytorch_model.bin')
SD_SCHEDULER = {'_class_name': 'PNDMScheduler', 'beta_start': 0.00085, 'beta_end': 0.012,
                'beta_schedule': 'scaled_linear', 'num_train_timesteps': 1000, 'prediction_type': 'epsilon',
                'set_alpha_to_one': False, 'skip_prk_steps': True, 'steps_offset': 1, 'clip_sample': False}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"'{path}': cannot read JSON ({e})") from e


def _component_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Weights of one component folder: plain, sharded (an index.json) or a variant file."""
    for name in WEIGHT_NAMES:
        index = folder / f'{name}.index.json'
        if index.is_file():
            shards = sorted(set(_read_json(index)['weight_map'].values()))
            return {k: v for shard in shards for k, v in load_state_dict(folder / shard).items()}
        if (folder / name).is_file():
            return load_state_dict(folder / name)
    variants = sorted(folder.glob('*.safetensors'))
    if variants:
        return load_state_dict(variants[0])
    raise CheckpointError(f"'{folder}': no weights (expected one of {', '.join(WEIGHT_NAMES)})")


COMPONENTS = ('unet', 'vae', 'text_encoder', 'text_encoder_2')


def read_diffusers_configs(path: str | Path) -> dict[str, dict]:
    """{component: config.json} for the unet, vae and text encoder folders present."""
    root = Path(path)
    return {part: _read_json(root / part / 'config.json') if (root / part / 'config.json').is_file() else {}
            for part in COMPONENTS if (root / part).is_dir()}


def read_diffusers(path: str | Path) -> tuple[dict[str, dict], dict[str, dict]]:
    """({component: state dict}, {component: config.json}) for unet, vae and the text encoders."""
    configs = read_diffusers_configs(path)
    if not configs:
        raise CheckpointError(f"'{path}': no unet/, vae/ or text_encoder/ folder")
    return {part: _component_weights(Path(path) / part) for part in configs}, configs


def diffusers_to_ours(components: Mapping[str, Mapping[str, torch.Tensor]],
                      configs: Mapping[str, Mapping]) -> dict[str, torch.Tensor]:
    """Our state dict from diffusers component state dicts and their config.json dicts."""
    out: dict[str, torch.Tensor] = {}
    if 'unet' in components:
        unet = unet_keymap(unet_cfg_from_diffusers(configs['unet'])).to_ours(components['unet'])
        out.update({f'model.{k}': v for k, v in unet.items()})
    if 'vae' in components:
        vae = vae_keymap(vae_cfg_from_diffusers(configs['vae'])).to_ours(components['vae'])
        out.update({f'first_stage_model.{k}': v for k, v in vae.items()})
    for part, prefix in diffusers_text_prefixes(components).items():
        out.update({prefix + k: v for k, v in TEXT_MAP.to_ours(components[part]).items()})
    return out


def _take(sd: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def ours_to_diffusers(sd: Mapping[str, torch.Tensor], unet_cfg: Mapping | None = None,
                      vae_cfg: Mapping | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """{'unet', 'vae', 'text_encoder'} state dicts in diffusers names (parts present in `sd`).
    Entries with no diffusers place (EMA copy, schedule buffers) are left out."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    unet, vae = _take(sd, 'model.'), _take(sd, 'first_stage_model.')
    if unet:
        out['unet'] = unet_keymap(unet_cfg).to_theirs(unet)
    if vae:
        out['vae'] = vae_keymap(vae_cfg).to_theirs(vae)
    for part, prefix in ours_text_folders(sd).items():
        out[part] = TEXT_MAP.to_theirs(_take(sd, prefix))
    return out


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(package)
    except PackageNotFoundError:
        return '0.0.0'


def _write_json(path: Path, data: Mapping) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2, sort_keys=True) + '\n'))


# SDXL's published scheduler (the pipelines read any; the sampler is chosen at sampling time).
SDXL_SCHEDULER = {'_class_name': 'EulerDiscreteScheduler', 'beta_start': 0.00085, 'beta_end': 0.012,
                  'beta_schedule': 'scaled_linear', 'num_train_timesteps': 1000, 'prediction_type': 'epsilon',
                  'interpolation_type': 'linear', 'use_karras_sigmas': False, 'steps_offset': 1,
                  'timestep_spacing': 'leading'}
TEXT_CLASSES = {'text_encoder': 'CLIPTextModel', 'text_encoder_2': 'CLIPTextModelWithProjection'}


def _text_2_config(sd: Mapping[str, torch.Tensor]) -> dict:
    """SDXL's bigG `text_encoder_2` config read off its weights (exact GELU, with projection)."""
    config = clip_text_config_from_state({k: v for k, v in sd.items() if not k.startswith('text_projection')})
    return {**config, 'architectures': ['CLIPTextModelWithProjection'], 'hidden_act': 'gelu',
            'projection_dim': sd['text_projection.weight'].shape[0]}


def _pipeline_index(parts: Mapping[str, object], diffusers_version: str) -> dict:
    """model_index.json: StableDiffusionPipeline, or SDXL's (base: both encoders; the refiner:
    text_encoder_2 alone, run as img2img)."""
    index: dict = {'_diffusers_version': diffusers_version}
    if 'text_encoder_2' not in parts:
        return {**index, '_class_name': 'StableDiffusionPipeline', 'scheduler': ['diffusers', SD_SCHEDULER['_class_name']],
                'safety_checker': [None, None], 'feature_extractor': [None, None], 'requires_safety_checker': False}
    index.update(scheduler=['diffusers', SDXL_SCHEDULER['_class_name']], image_encoder=[None, None],
                 feature_extractor=[None, None])
    if 'text_encoder' in parts:
        return {**index, '_class_name': 'StableDiffusionXLPipeline', 'force_zeros_for_empty_prompt': True}
    return {**index, '_class_name': 'StableDiffusionXLImg2ImgPipeline', 'text_encoder': [None, None],
            'tokenizer': [None, None], 'force_zeros_for_empty_prompt': False, 'requires_aesthetics_score': True}


def _save_tokenizer(tokenizer: object, target: Path) -> None:
    """A tokenizer directory (copied) or a transformers tokenizer (saved) into `target`."""
    if isinstance(tokenizer, (str, Path)):
        shutil.copytree(tokenizer, target, dirs_exist_ok=True)
    else:
        tokenizer.save_pretrained(str(target))


def save_diffusers(sd: Mapping[str, torch.Tensor], folder: str | Path, unet_cfg: Mapping | None = None,
                   vae_cfg: Mapping | None = None, text_cfg: Mapping | None = None,
                   tokenizer_dir: str | Path | None = None, scaling_factor: float = SD_SCALE_FACTOR,
                   logger: logging.Logger | None = None, text_cfg_2: Mapping | None = None,
                   tokenizer_2: object = None, time_embed_dim: int = 256) -> list[Path]:
    """Write our state dict as a diffusers folder; returns the files written. Configs derive
    from our blocks (None = SD1.5); the text configs from `text_cfg` / `text_cfg_2` or the
    weights. SDXL (`cond_stage_model.embedders.*`): text_encoder_2, its tokenizer and SDXL's
    pipeline index; `time_embed_dim` is the width of each size embedding. Tokenizers: a
    directory to copy or a transformers tokenizer to save."""
    root = Path(folder)
    diffusers_version = _version('diffusers')
    parts = ours_to_diffusers(sd, unet_cfg, vae_cfg)
    configs = {'unet': lambda: diffusers_unet_config(unet_cfg, time_embed_dim),
               'vae': lambda: diffusers_vae_config(vae_cfg, scaling_factor),
               'text_encoder': lambda: dict(text_cfg or clip_text_config_from_state(parts['text_encoder'])),
               'text_encoder_2': lambda: dict(text_cfg_2 or _text_2_config(parts['text_encoder_2']))}
    written: list[Path] = []
    index = _pipeline_index(parts, diffusers_version)
    for part, weights in parts.items():
        text = part in TEXT_CLASSES
        stamp = {'transformers_version': _version('transformers')} if text else {'_diffusers_version': diffusers_version}
        config = {**configs[part](), **stamp}
        file = root / part / ('model.safetensors' if text else 'diffusion_pytorch_model.safetensors')
        save_state_dict(weights, file, metadata={'format': 'pt'})
        _write_json(root / part / 'config.json', config)
        written += [file, root / part / 'config.json']
        index[part] = ['transformers', TEXT_CLASSES[part]] if text else ['diffusers', config['_class_name']]
    for name, tokenizer, encoder in (('tokenizer', tokenizer_dir, 'text_encoder'),
                                     ('tokenizer_2', tokenizer_2, 'text_encoder_2')):
        if tokenizer is not None and encoder in parts:
            _save_tokenizer(tokenizer, root / name)
            index[name] = ['transformers', 'CLIPTokenizer']
            written.append(root / name)
    scheduler = SDXL_SCHEDULER if 'text_encoder_2' in parts else SD_SCHEDULER
    _write_json(root / 'scheduler' / 'scheduler_config.json', {**scheduler, '_diffusers_version': diffusers_version})
    _write_json(root / 'model_index.json', index)
    written += [root / 'scheduler' / 'scheduler_config.json', root / 'model_index.json']
    dropped = len(sd) - sum(len(w) for w in parts.values())
    if dropped and logger:
        logger.info(f'{dropped} entries have no diffusers place (EMA copy, schedule buffers) and were not written')
    return written

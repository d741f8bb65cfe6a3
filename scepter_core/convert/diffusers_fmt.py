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


def save_diffusers(sd: Mapping[str, torch.Tensor], folder: str | Path, unet_cfg: Mapping | None = None,
                   vae_cfg: Mapping | None = None, text_cfg: Mapping | None = None,
                   tokenizer_dir: str | Path | None = None, scaling_factor: float = SD_SCALE_FACTOR,
                   logger: logging.Logger | None = None) -> list[Path]:
    """Write our state dict as a diffusers folder; returns the files written. Configs derive
    from our blocks (None = SD1.5); the text config from `text_cfg` or the weights."""
    root = Path(folder)
    diffusers_version = _version('diffusers')
    parts = ours_to_diffusers(sd, unet_cfg, vae_cfg)
    configs = {'unet': lambda: diffusers_unet_config(unet_cfg),
               'vae': lambda: diffusers_vae_config(vae_cfg, scaling_factor),
               'text_encoder': lambda: dict(text_cfg or clip_text_config_from_state(parts['text_encoder']))}
    written: list[Path] = []
    index = {'_class_name': 'StableDiffusionPipeline', '_diffusers_version': diffusers_version,
             'scheduler': ['diffusers', SD_SCHEDULER['_class_name']],
             'safety_checker': [None, None], 'feature_extractor': [None, None], 'requires_safety_checker': False}
    for part, weights in parts.items():
        stamp = {'transformers_version': _version('transformers')} if part == 'text_encoder' \
            else {'_diffusers_version': diffusers_version}
        config = {**configs[part](), **stamp}
        file = root / part / ('model.safetensors' if part == 'text_encoder' else 'diffusion_pytorch_model.safetensors')
        save_state_dict(weights, file, metadata={'format': 'pt'})
        _write_json(root / part / 'config.json', config)
        written += [file, root / part / 'config.json']
        index[part] = ['transformers', 'CLIPTextModel'] if part == 'text_encoder' else \
            ['diffusers', config['_class_name']]
    if tokenizer_dir:
        shutil.copytree(tokenizer_dir, root / 'tokenizer', dirs_exist_ok=True)
        index['tokenizer'] = ['transformers', 'CLIPTokenizer']
        written.append(root / 'tokenizer')
    _write_json(root / 'scheduler' / 'scheduler_config.json', {**SD_SCHEDULER, '_diffusers_version': diffusers_version})
    _write_json(root / 'model_index.json', index)
    written += [root / 'scheduler' / 'scheduler_config.json', root / 'model_index.json']
    dropped = len(sd) - sum(len(w) for w in parts.values())
    if dropped and logger:
        logger.info(f'{dropped} entries have no diffusers place (EMA copy, schedule buffers) and were not written')
    return written

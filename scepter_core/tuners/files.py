"""Adapter files: ours (safetensors keyed like the model, with the tuner configs and the
base-model hash in the metadata), reading any supported LoRA format, and `--lora PATH[:SCALE]`."""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from torch import nn

from ..base import get_logger
from ..checkpoint import load_state_dict, read_safetensors_header, save_state_dict
from ..errors import CheckpointError, ConfigError
from .apply import adapter_configs, inject_state, model_lora_state, record_of
from .state import ADAPTER_KEY, LoraState, split_state

FORMAT = 'scepter-lora'
_SPEC = re.compile(r'^(?P<path>.+):(?P<scale>[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?)$')


def adapter_metadata(model: nn.Module, tuner_cfgs: dict[str, dict] | None = None,
                     base_hash: str | None = None) -> dict[str, str]:
    """safetensors metadata of an adapter file (or a LoRA run's checkpoint): format marker,
    tuner configs, base-model hash. Reads no tensors."""
    record = record_of(model)
    configs = tuner_cfgs if tuner_cfgs is not None else adapter_configs(model)
    return {'format': FORMAT, 'tuners': json.dumps(configs, sort_keys=True),
            'base_hash': base_hash or record.base_hash}


def save_adapter(model: nn.Module, path: str | Path, tuner_cfgs: dict[str, dict] | None = None,
                 base_hash: str | None = None) -> Path:
    """Write the model's adapters (only) to `path` as safetensors, atomically."""
    state = model_lora_state(model)
    if not state.tensors:
        raise CheckpointError(f"nothing to save to '{path}': the model holds no adapters")
    save_state_dict(state.state_dict(), path, metadata=adapter_metadata(model, tuner_cfgs, base_hash))
    return Path(path)


def resolve_adapter_path(path: str) -> Path:
    """A LoRA file, a checkpoint step directory, a work or checkpoints directory, a `latest`
    pointer file, or a hub URI -> the weights file."""
    from ..checkpoint import WEIGHTS, find_step_dir
    from ..fs import FS
    p = FS.local_path(path)
    step = find_step_dir(p)
    p = step / WEIGHTS if step is not None else p
    if not p.is_file():
        raise CheckpointError(f"no LoRA file or checkpoint at '{path}'")
    return p


def _configs_beside(path: Path, logger: logging.Logger) -> dict[str, dict]:
    """Tuner blocks from the recipe saved next to a checkpoint (`config.yaml`), for weight
    files written without our metadata: block i became adapter `lora{i}`; a run that
    continued a trained adapter (TUNER: path) has that adapter's configs."""
    from ..config import Config
    recipe = path.parent / 'config.yaml'
    if not recipe.is_file():
        return {}
    tuners = Config.load(recipe).get_path('SOLVER.TUNER') or []
    if isinstance(tuners, str):
        return read_ours(resolve_adapter_path(tuners), logger).configs
    tuners = tuners if isinstance(tuners, list) else [tuners]
    return {f'lora{i}': Config(t).to_dict() for i, t in enumerate(tuners) if isinstance(t, dict)}


def _guess_configs(sd: dict, source: str, logger: logging.Logger) -> dict[str, dict]:
    adapters = {m['adapter']: tuple(v.shape) for k, v in sd.items()
                if (m := ADAPTER_KEY.match(k)) and m['part'] == 'lora_A'}
    if adapters:
        logger.warning(f"{source}: no LoRA config stored with the weights; assuming LORA_ALPHA = R")
    return {a: {'NAME': 'LoRA', 'R': shape[0], 'LORA_ALPHA': shape[0]} for a, shape in adapters.items()}


def read_ours(path: Path, logger: logging.Logger | None = None) -> LoraState:
    """Our adapter file (or a LoRA run's checkpoint weights) -> LoraState."""
    logger = logger or get_logger()
    header, _ = read_safetensors_header(path) if path.suffix in ('.safetensors', '.sft') else ({}, 0)
    metadata = dict(header.get('__metadata__') or {})
    sd = load_state_dict(path)
    configs = json.loads(metadata['tuners']) if 'tuners' in metadata else \
        _configs_beside(path, logger) or _guess_configs(sd, str(path), logger)
    state = split_state(sd, configs, str(path))
    state.metadata = metadata
    return state


def detect_lora_format(keys: list[str]) -> str:
    """'kohya', 'diffusers' (peft-style keys under unet. / text_encoder(_2). / transformer.) or 'ours'."""
    if any(k.startswith(('lora_unet_', 'lora_te_', 'lora_te1_', 'lora_te2_', 'diffusion_model.')) for k in keys):
        return 'kohya'  # ComfyUI's diffusion_model.* layout reads as kohya's
    if any(k.startswith(('unet.', 'text_encoder.', 'text_encoder_2.', 'transformer.')) for k in keys):
        return 'diffusers'
    if any(ADAPTER_KEY.match(k) for k in keys):
        return 'ours'
    raise CheckpointError(f'not a LoRA file this tool reads (kohya, diffusers/peft or ours): keys like '
                          f'{", ".join(keys[:3]) or "none"}')


def lora_file_format(path: str | Path) -> str | None:
    """The LoRA format of a file or checkpoint ('ours', 'kohya', 'diffusers'), or None for
    anything else, e.g. whole-model weights (reads names only)."""
    from ..checkpoint import checkpoint_keys
    try:
        keys = checkpoint_keys(resolve_adapter_path(str(path)))
        fmt = detect_lora_format(keys)
    except CheckpointError:
        return None
    # our LoRA checkpoints hold adapters and at most the biases trained beside them
    if fmt == 'ours' and not all(ADAPTER_KEY.match(k) or k.endswith('.bias') for k in keys):
        return None
    return fmt


def read_lora_file(path: str | Path, model: nn.Module, logger: logging.Logger | None = None) -> LoraState:
    """Any supported LoRA file -> LoraState in our names (kohya and diffusers names are
    resolved against `model`'s modules)."""
    from ..checkpoint import checkpoint_keys
    from .formats import import_kohya, import_peft_diffusers
    p = resolve_adapter_path(str(path))
    fmt = detect_lora_format(checkpoint_keys(p))
    if fmt == 'kohya':
        return import_kohya(p, model)
    if fmt == 'diffusers':
        return import_peft_diffusers(p, model)
    return read_ours(p, logger)


def load_adapter(model: nn.Module, path: str | Path | LoraState, scale: float = 1.0, trainable: bool = False,
                 logger: logging.Logger | None = None) -> list[str]:
    """Add the adapters in `path` (any supported format) to `model`, scaled by `scale`.
    Returns the adapter names they got in the model."""
    state = path if isinstance(path, LoraState) else read_lora_file(path, model, logger)
    return inject_state(model, state, trainable=trainable, scale=scale, source=str(path), logger=logger)


def parse_lora_spec(spec: str) -> tuple[str, float]:
    """'PATH[:SCALE]' -> (path, scale); a path may itself contain ':' (ms://...)."""
    m = _SPEC.match(spec)
    if m:
        return m['path'], float(m['scale'])
    head, _, scale = spec.rpartition(':')
    if head and Path(head).is_file():  # FILE:SCALE whose scale is not a number
        raise ConfigError(f"LoRA '{spec}': the scale '{scale}' after ':' is not a number (e.g. {head}:0.8)")
    return spec, 1.0


def apply_lora_files(model: nn.Module, specs: list[str], logger: logging.Logger | None = None) -> list[str]:
    """`scepter infer --lora PATH[:SCALE] ...`: load each file (ours, kohya/A1111 or
    diffusers/peft) for inference, every one active at its scale."""
    names: list[str] = []
    for spec in specs:
        path, scale = parse_lora_spec(spec)
        try:
            names += load_adapter(model, path, scale=scale, trainable=False, logger=logger)
        except CheckpointError as e:
            if path in str(e):
                raise
            raise CheckpointError(f"LoRA '{path}': {e}") from e
    return names


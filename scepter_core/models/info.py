"""Sizes of a model family's components (`scepter model info`): exact parameter counts from
building them on the meta device (no memory used), and the memory their weights, gradients
and optimizer state take for inference, full fine-tuning and LoRA. Activations are not
included (they depend on resolution, batch and checkpointing)."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .family_table import FAMILIES, component_block, family

DTYPE_BYTES = {'float32': 4, 'float16': 2, 'bfloat16': 2}
# Scepter's LoRA recipes' targets: attention and feed-forward projections of the UNet's
# transformers, and of the text encoders' blocks.
LORA_TARGETS = {'unet': re.compile(r'(to_q|to_k|to_v|to_out\.0|net\.0\.proj|net\.2)$'),
                # the flow transformers' attention, MLP and modulation linears (Scepter's FLUX LoRA targets)
                'transformer': re.compile(r'(blocks\.\d+\.(.+\.)?(qkv|proj|linear1|linear2|lin|fc1|fc2|mlp\.[02]))$'),
                'text': re.compile(r'(q_proj|k_proj|v_proj|out_proj|fc1|fc2)$')}
TRAIN_BYTES = 16  # per trained parameter: fp32 weight + fp32 gradient + AdamW's two fp32 moments
COMPONENT_REGISTRY = {'unet': 'BACKBONES', 'transformer': 'BACKBONES', 'vae': 'MODELS'}  # text encoders: EMBEDDERS


def build_components(name: str) -> dict[str, nn.Module]:
    """The family's components built on the meta device, keyed by diffusers' folder names."""
    from ..registry import REGISTRIES
    entry = family(name)
    out = {}
    with torch.device('meta'):
        for folder, where in entry['components'].items():
            block = component_block(entry['model'], where)
            out[folder] = REGISTRIES[COMPONENT_REGISTRY.get(folder, 'EMBEDDERS')].build(block)
    return out


def lora_parameters(module: nn.Module, pattern: re.Pattern, rank: int) -> int:
    """Parameters of rank-`rank` LoRA adapters (A: rank x in, B: out x rank) on the Linear layers
    whose names match `pattern`."""
    return sum(rank * (m.in_features + m.out_features) for n, m in module.named_modules()
               if isinstance(m, nn.Linear) and pattern.search(n))


def component_info(folder: str, module: nn.Module, lora_rank: int) -> dict[str, Any]:
    n = sum(p.numel() for p in module.parameters())
    info = {'class': type(module).__name__, 'parameters': n,
            'bytes': {dtype: n * size for dtype, size in DTYPE_BYTES.items()}}
    if folder in ('unet', 'transformer') or folder.startswith('text_encoder'):
        targets = LORA_TARGETS.get(folder, LORA_TARGETS['text'])
        info['lora_parameters'] = lora_parameters(module, targets, lora_rank)
    return info


def memory(components: dict[str, dict[str, Any]], dtype: str) -> dict[str, int]:
    """Bytes to hold the components: for inference (all in `dtype`), for a full fine-tune of the
    UNet (its fp32 weights, gradients and AdamW state, plus the half-precision weight copies
    autocast keeps; the rest frozen in `dtype`, as the solver casts frozen modules under
    USE_AMP), and for LoRA on the UNet and text encoders (every base weight frozen in `dtype`,
    adapters trained in fp32)."""
    size = DTYPE_BYTES[dtype]
    total = sum(c['parameters'] for c in components.values())
    unet = components.get('unet', components.get('transformer', {})).get('parameters', 0)
    lora = sum(c.get('lora_parameters', 0) for c in components.values())
    autocast_copies = unet * size if size < 4 else 0
    return {'inference': total * size, 'full_training': unet * TRAIN_BYTES + autocast_copies + (total - unet) * size,
            'lora_training': total * size + lora * TRAIN_BYTES}


def report(family_name: str | None, components: dict[str, dict[str, Any]], dtype: str, lora_rank: int,
           source: str | None = None) -> dict[str, Any]:
    if dtype not in DTYPE_BYTES:
        raise ConfigError(f"--dtype: {dtype!r} is not one of {', '.join(DTYPE_BYTES)}")
    out = {'family': family_name, 'dtype': dtype, 'lora_rank': lora_rank, 'components': components,
           'memory': memory(components, dtype)}
    if source:
        out['source'] = source
    return out


def family_info(name: str, dtype: str = 'float16', lora_rank: int = 64) -> dict[str, Any]:
    """Counts and memory of a family of the table (`sd15`, `sd21`, `sd21v`, `sdxl`, `sdxl-refiner`)."""
    comps = {folder: component_info(folder, m, lora_rank) for folder, m in build_components(name).items()}
    return report(name, comps, dtype, lora_rank)


# ---- a checkpoint on disk -------------------------------------------------------------------
# Where each component's tensors sit in a single file, ours or the original LDM/SGM layout.
FILE_PREFIXES = {
    'unet': ('model.diffusion_model.', 'model.'),
    'vae': ('first_stage_model.',),
    'text_encoder': ('conditioner.embedders.0.', 'cond_stage_model.embedders.0.', 'cond_stage_model.'),
    'text_encoder_2': ('conditioner.embedders.1.', 'cond_stage_model.embedders.1.'),
}
NOT_PARAMETERS = re.compile(r'(^|\.)(position_ids|logit_scale|attn_mask)$')


def _header_counts(files: list[Path]) -> dict[str, int]:
    from ..checkpoint import read_safetensors_header
    counts: dict[str, int] = {}
    for f in files:
        header, _ = read_safetensors_header(f)
        for key, meta in header.items():
            if key != '__metadata__' and not NOT_PARAMETERS.search(key):
                counts[key] = int(torch.Size(meta['shape']).numel())
    return counts


def _file_components(counts: dict[str, int]) -> dict[str, int]:
    taken: set[str] = set()
    out = {}
    for folder, prefixes in FILE_PREFIXES.items():
        for prefix in prefixes:
            keys = [k for k in counts if k.startswith(prefix) and k not in taken]
            if folder == 'text_encoder' and prefix == 'cond_stage_model.':
                keys = [k for k in keys if not k.startswith('cond_stage_model.embedders.')]
            if keys:
                taken.update(keys)
                out[folder] = sum(counts[k] for k in keys)
                break
    return out


def path_components(path: str | Path) -> dict[str, int]:
    """Parameter counts per component of a diffusers folder, a safetensors file (ours or the
    original layout) or our work/step directory, read from the safetensors headers only."""
    from ..checkpoint import WEIGHTS, find_step_dir
    p = Path(path)
    if p.is_dir() and (p / 'model_index.json').is_file():
        out = {}
        for folder in json.loads((p / 'model_index.json').read_text()):
            files = sorted((p / folder).glob('*.safetensors')) if (p / folder).is_dir() else []
            if files:
                out[folder] = sum(_header_counts(files).values())
        return out
    step = find_step_dir(p) if p.is_dir() or p.name == 'latest' else None
    if step is not None:
        p = step / WEIGHTS
    if not p.is_file() or p.suffix != '.safetensors':
        raise ConfigError(f"'{path}': expected a diffusers folder (model_index.json), a .safetensors file or a "
                          f'work directory with checkpoints')
    return _file_components(_header_counts([p]))


def detect_family(counts: dict[str, int]) -> str | None:
    """The table's family whose UNet has exactly the UNet's parameter count (None if none)."""
    unet = counts.get('unet')
    for name in FAMILIES:
        if unet is not None and unet == _family_unet_count(name):
            return name
    return None


_UNET_COUNTS: dict[str, int] = {}


def _family_unet_count(name: str) -> int:
    if name not in _UNET_COUNTS:
        from ..registry import BACKBONES
        with torch.device('meta'):
            unet = BACKBONES.build(component_block(family(name)['model'], 'DIFFUSION_MODEL'))
        _UNET_COUNTS[name] = sum(p.numel() for p in unet.parameters())
    return _UNET_COUNTS[name]


def path_info(path: str | Path, dtype: str = 'float16', lora_rank: int = 64) -> dict[str, Any]:
    """`family_info` for a checkpoint: counts from the file(s); LoRA sizes from the detected family."""
    counts = path_components(path)
    name = detect_family(counts)
    lora = {k: v.get('lora_parameters') for k, v in family_info(name, dtype, lora_rank)['components'].items()} \
        if name else {}
    comps = {}
    for folder, n in counts.items():
        comps[folder] = {'parameters': n, 'bytes': {d: n * s for d, s in DTYPE_BYTES.items()}}
        if lora.get(folder) is not None:
            comps[folder]['lora_parameters'] = lora[folder]
    return report(name, comps, dtype, lora_rank, source=str(path))

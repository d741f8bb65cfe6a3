"""Peak training memory of a flow-transformer run, planned before anything is allocated
(`scepter model info --family flux-dev --plan`, `--cfg RECIPE`, and the solver's log at train
start: the same rows, rendered by `render_plan`).

weights   every component resident: frozen ones in the compute dtype (int8 / fp8 QUANTIZE_BASE:
          1 byte per frozen Linear weight + one scale per output row), trained ones in fp32 (+ the
          half-precision copies autocast makes of them under USE_AMP). OFFLOAD_BLOCKS with
          gradient checkpointing: the blocks' frozen weights live on the CPU and one block's copy
          is on the device at a time; without checkpointing autograd keeps every block's copy for
          the backward (a Linear's input gradient needs its weight), so offload saves nothing.
gradients 4 bytes per trained parameter (released after each step)
optimizer AdamW: two fp32 moments, and one fp32 temporary of the trained size in its step
activations what autograd keeps for the backward, traced on the meta device (memory_trace.py)
peak      weights + moments + the larger of (activations) and (gradients + the step's temporary).
The frozen VAE and text encoders run under no_grad before the transformer: their working set is
freed before it starts and is not added."""
from __future__ import annotations

import copy
import re
from dataclasses import asdict, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from torch import nn

from .memory_trace import TRANSFORMER_LORA, Switches, activation_bytes, build_meta, transformer_blocks

DTYPE_BYTES = {'float32': 4, 'float16': 2, 'bfloat16': 2}
ADAMW_BYTES = 12  # two fp32 moments + one fp32 temporary in the step
DEFAULT_LORA_RANK = 16  # the LoRA rows of a full fine-tune recipe's table
GIB = 2 ** 30
__all__ = ['Switches', 'TRANSFORMER_LORA', 'plan', 'switch_table', 'render_plan', 'family_plan', 'recipe_plan',
           'recipe_table', 'recipe_plan_lines']


def _quantized_bytes(module: nn.Module, dtype_bytes: int) -> int:
    """int8 / fp8 weight-only: 1 byte per Linear weight, one scale per output row, bias as is."""
    total = 0
    for m in module.modules():
        if isinstance(m, nn.Linear):
            total += m.weight.numel() + m.out_features * dtype_bytes
            total += m.bias.numel() * dtype_bytes if m.bias is not None else 0
        else:
            total += sum(p.numel() for p in m.parameters(recurse=False)) * dtype_bytes
    return total


def _frozen_bytes(module: nn.Module, s: Switches) -> int:
    size = DTYPE_BYTES[s.dtype]
    return _quantized_bytes(module, size) if s.quantize else sum(p.numel() for p in module.parameters()) * size


def plan(transformer_block: dict[str, Any], other_parameters: int, s: Switches, latent_channels: int,
         size_factor: int, activations: dict[str, int] | None = None,
         transformer: nn.Module | None = None) -> dict[str, int]:
    """Planned bytes of one training run (weights, gradients, optimizer, activations, peak) of
    the transformer `transformer_block` beside `other_parameters` frozen ones (VAE, text encoders).
    `activations`: this run's {'saved', 'working'} when already traced (they do not depend on
    QUANTIZE_BASE or OFFLOAD_BLOCKS); `transformer`: the block built on the meta device, if it is."""
    size = DTYPE_BYTES[s.dtype]
    transformer = transformer if transformer is not None else build_meta(transformer_block)
    if s.lora_rank:
        pattern = re.compile(s.lora_targets)  # as peft matches it: the whole name in the network
        trained = sum(s.lora_rank * (m.in_features + m.out_features) for n, m in transformer.named_modules()
                      if isinstance(m, nn.Linear) and pattern.fullmatch('model.' + n))
        base = _frozen_bytes(transformer, s)
        if s.offload and s.checkpointing:  # one block's frozen copy on the device instead of all
            blocks = [_frozen_bytes(b, s) for b in transformer_blocks(transformer)]
            base += max(blocks, default=0) - sum(blocks)
    else:  # nothing of the transformer is frozen: QUANTIZE_BASE and OFFLOAD_BLOCKS change nothing
        trained, base = sum(p.numel() for p in transformer.parameters()), 0
    weights = base + trained * 4 + (trained * size if size < 4 else 0) + other_parameters * size
    act = activations or activation_bytes(transformer_block, s, latent_channels, size_factor)[s.checkpointing]
    out = {'weights': weights, 'gradients': trained * 4, 'optimizer': trained * ADAMW_BYTES,
           'activations': act['saved'] + act['working'], 'trained_parameters': trained}
    # Two moments stay; the forward's activations and the step's gradients + temporary never
    # coexist (gradients are released after each step).
    moments = trained * 8
    out['peak'] = weights + moments + max(out['activations'], out['gradients'] + out['optimizer'] - moments)
    return out


def _public(s: Switches) -> dict[str, Any]:
    return {k: v for k, v in asdict(s).items() if k != 'lora_targets'}


def switch_table(transformer_block: dict[str, Any], other_parameters: int, base: Switches, latent_channels: int,
                 size_factor: int, lora_rank: int) -> list[dict[str, Any]]:
    """The plan for each switch: full fine-tune; LoRA on a base in the compute dtype, int8 or fp8
    (fp8: CUDA GPUs of compute capability 8.9+), each with OFFLOAD_BLOCKS off / on; each of these
    with checkpointing off / on. `saves`: the peak below the same tuning with no switch on (None:
    that row itself)."""
    tunings = [(0, None, False)] + [(lora_rank, q, o) for q in (None, 'int8', 'fp8') for o in (False, True)]
    traced: dict[int, dict[bool, dict[str, int]]] = {}
    rows: list[dict[str, Any]] = []
    transformer = build_meta(transformer_block)  # once: MMDiT's fixed positions take seconds
    for lora, quantize, offload in tunings:
        for ckpt in (False, True):
            s = replace(base, lora_rank=lora, quantize=quantize, offload=offload, checkpointing=ckpt,
                        lora_targets=base.lora_targets if lora else TRANSFORMER_LORA)
            if lora not in traced:  # one trace per tuning gives both checkpointing amounts
                traced[lora] = activation_bytes(transformer_block, s, latent_channels, size_factor)
            row = plan(transformer_block, other_parameters, s, latent_channels, size_factor, traced[lora][ckpt],
                       transformer)
            reference = next((r for r in rows if r['switches']['lora_rank'] == lora), None)
            rows.append({'switches': _public(s), **row,
                         'saves': reference['peak'] - row['peak'] if reference else None})
    return rows


def _row_index(rows: list[dict[str, Any]], s: Switches) -> int:
    """The row of `rows` with the switches of run `s`."""
    keys = ('lora_rank', 'quantize', 'offload', 'checkpointing') if s.lora_rank else ('lora_rank', 'checkpointing')
    want = _public(s)
    return next(i for i, r in enumerate(rows) if all(r['switches'][k] == want[k] for k in keys))


def render_plan(rows: list[dict[str, Any]], title: str, mark: int | None = None) -> list[str]:
    """The plan's rows as text lines, in GiB (MiB when every peak is under 1 GiB: tiny runs), two
    decimals: what `scepter model info` prints and the solver logs. `mark`: the index of the row
    of the run at hand."""
    unit, div = ('GiB', GIB) if max(r['peak'] for r in rows) >= GIB else ('MiB', 2 ** 20)
    fmt = '{:<9} {:<9} {:<7} {:<13} {:>8} {:>11} {:>11} {:>8} {:>6}'
    lines = [f'planned peak training memory, {unit} ({title})',
             fmt.format('tuning', 'base', 'offload', 'checkpointing', 'weights', 'grads+optim', 'activations',
                        'peak', 'saves')]
    for i, r in enumerate(rows):
        s = r['switches']
        cells = (f"LoRA r{s['lora_rank']}" if s['lora_rank'] else 'full', s['quantize'] or s['dtype'],
                 'on' if s['offload'] else 'off', 'on' if s['checkpointing'] else 'off', f"{r['weights'] / div:.2f}",
                 f"{(r['gradients'] + r['optimizer']) / div:.2f}", f"{r['activations'] / div:.2f}",
                 f"{r['peak'] / div:.2f}", f"{r['saves'] / div:.2f}" if r.get('saves') is not None else '-')
        lines.append(fmt.format(*cells) + ('  <- this recipe' if i == mark else ''))
    return lines


def plan_title(name: str, s: Switches) -> str:
    return (f'{name}: {s.dtype}, batch {s.batch}, {s.size[0]}x{s.size[1]} px, {s.text_tokens} text tokens; '
            f'activations traced on the meta device')


# ---- the plan of a family (`--family`) or a recipe (`--cfg`) ---------------------------------

def latent_geometry(model: dict[str, Any]) -> tuple[int, int, int]:
    """(latent channels, pixels per latent cell, text tokens the transformer sees) of a flow
    network block."""
    backbone = model['DIFFUSION_MODEL']
    if backbone.get('NAME') == 'Flux':
        channels = int(backbone.get('IN_CHANNELS', 64)) // int(backbone.get('PATCH_SIZE', 2)) ** 2
        t5 = model.get('COND_STAGE_MODEL', {}).get('T5_MODEL') or {}
        tokens = int(t5.get('MAX_LENGTH', 512 if backbone.get('GUIDANCE_EMBED', True) else 256))
    else:
        channels = int(backbone.get('IN_CHANNELS', 16))
        t5 = model.get('COND_STAGE_MODEL', {}).get('T5_XXL') or {}
        tokens = 77 + int(t5.get('LENGTH', t5.get('MAX_LENGTH', 256)))
    encoder = (model.get('FIRST_STAGE_MODEL') or {}).get('ENCODER') or {}
    factor = 2 ** (len(encoder.get('CH_MULT', [1, 2, 4, 4])) - 1)  # the VAE's downsampling, as it encodes
    return channels, factor, tokens


def family_plan(name: str, dtype: str, lora_rank: int, batch: int, size: tuple[int, int]) -> list[dict[str, Any]]:
    """The switch table of a flow family of the table (flux-dev, flux-schnell, sd35-*)."""
    from ..errors import ConfigError
    from .family_table import family
    entry = family(name)
    if 'transformer' not in entry['components']:
        raise ConfigError(f"--plan: '{name}' is not a flow-transformer family (flux-dev, flux-schnell, sd35-medium, "
                          f'sd35-large)')
    channels, factor, tokens = latent_geometry(entry['model'])
    base = Switches(dtype=dtype, batch=batch, size=size, text_tokens=tokens)
    return switch_table(entry['model']['DIFFUSION_MODEL'], _published_frozen(name), base, channels, factor, lora_rank)


@lru_cache(maxsize=None)
def _published_counts(name: str) -> dict[str, int]:
    from .info import build_components
    return {k: sum(p.numel() for p in m.parameters()) for k, m in build_components(name).items()}


def _published_frozen(name: str) -> int:
    """Parameters of the family's VAE and text encoders, as published."""
    return sum(n for k, n in _published_counts(name).items() if k != 'transformer')


# The text encoders of a recipe without their files: the published ones of its family (the same
# T5-XXL and CLIP for FLUX dev / schnell, and for SD3.5 medium / large).
TEXT_FAMILY = {'Flux': 'flux-dev', 'MMDiT': 'sd35-medium'}


def _file_parameters(block: Any) -> int | None:
    """Parameters of an encoder block's weights on this machine (safetensors headers), or None."""
    from ..fs import FS
    from .info import _header_counts
    path = block.get('MODEL_PATH') or block.get('PRETRAINED_MODEL') if isinstance(block, dict) else None
    local = Path(FS.local_or_none(str(path)) or '') if path else None
    files = sorted(local.glob('*.safetensors')) if local and local.is_dir() else [local] if local and \
        local.suffix == '.safetensors' and local.is_file() else []
    return sum(_header_counts(files).values()) if files else None


def _frozen_parameters(model: dict[str, Any]) -> tuple[int, str]:
    """(parameters of the recipe's frozen VAE and text encoders, where the encoders' came from)."""
    import torch

    from .family_table import component_block, family
    from ..registry import MODELS
    vae = {k: v for k, v in model['FIRST_STAGE_MODEL'].items() if k != 'PRETRAINED_MODEL'}
    with torch.device('meta'):
        total = sum(p.numel() for p in MODELS.build(vae).parameters())
    name = TEXT_FAMILY[model['DIFFUSION_MODEL']['NAME']]
    sources = set()
    for folder, where in family(name)['components'].items():
        if not folder.startswith('text_encoder'):
            continue
        try:
            counted = _file_parameters(component_block(model, where))
        except (KeyError, IndexError, TypeError):  # the recipe names its encoders otherwise
            counted = None
        sources.add('their files' if counted is not None else f'{name} as published (no files here)')
        total += counted if counted is not None else _published_counts(name)[folder]
    return total, ' and '.join(sorted(sources))


def _filled(registry: str, block: Any) -> dict[str, Any]:
    """A copy of a config block with its class's defaults filled (as building it fills them), so
    that a recipe as read and the solver's built config plan the same."""
    from ..config import Config
    from ..params import fill_defaults
    from ..registry import REGISTRIES
    plain = block.to_dict() if hasattr(block, 'to_dict') else copy.deepcopy(dict(block))
    return fill_defaults(REGISTRIES[registry].get(plain['NAME']), Config(plain)).to_dict()


def _recipe_run(cfg: Any, size: tuple[int, int] | None) -> tuple[dict[str, Any], int, str, Switches, int, int]:
    """(transformer block, frozen parameters, their source, the run's switches, latent channels,
    pixels per latent cell) of a recipe (the whole recipe or its SOLVER block)."""
    from ..errors import ConfigError
    solver = cfg['SOLVER'] if 'SOLVER' in cfg else cfg
    solver = _filled('SOLVERS', solver)
    model = _filled('MODELS', solver['MODEL'])
    if (model.get('DIFFUSION_MODEL') or {}).get('NAME') not in TEXT_FAMILY:
        raise ConfigError("plan: 'SOLVER.MODEL.DIFFUSION_MODEL' is not a flow transformer (Flux, MMDiT)")
    backbone = model['DIFFUSION_MODEL'] = _filled('BACKBONES', model['DIFFUSION_MODEL'])
    others, source = _frozen_parameters(model)
    tuner = solver.get('TUNER') or []
    tuner = (tuner[0] if tuner else None) if isinstance(tuner, list) else tuner
    tuner = _filled('TUNERS', tuner) if isinstance(tuner, dict) else None  # a path: a trained adapter, no LoRA
    channels, factor, tokens = latent_geometry(model)
    image = size or model.get('IMAGE_SIZE') or (1024, 1024)
    s = Switches(dtype=solver['DTYPE'] if solver['USE_AMP'] else 'float32', quantize=solver['QUANTIZE_BASE'],
                 offload=bool(backbone.get('OFFLOAD_BLOCKS')), lora_rank=int(tuner['R']) if tuner else 0,
                 lora_targets=tuner['TARGET_MODULES'] if tuner else TRANSFORMER_LORA,
                 checkpointing=bool(backbone.get('USE_GRAD_CHECKPOINT') or backbone.get('USE_CHECKPOINT')),
                 batch=int(_filled('DATASETS', solver['TRAIN_DATA'])['BATCH_SIZE']) if solver.get('TRAIN_DATA') else 1,
                 size=tuple(image) if isinstance(image, (list, tuple)) else (int(image), int(image)),
                 text_tokens=tokens)
    if not s.lora_rank:  # nothing of the transformer is frozen: the switches of a frozen base do nothing
        s = replace(s, quantize=None, offload=False)
    return backbone, others, source, s, channels, factor


def recipe_table(cfg: Any, size: tuple[int, int] | None = None) -> dict[str, Any]:
    """The switch table ('rows') at a recipe's dtype, batch, LoRA rank and targets and `size`
    pixels (default: the model's IMAGE_SIZE); 'mark': the index of the recipe's own row (its
    QUANTIZE_BASE, OFFLOAD_BLOCKS, checkpointing); 'frozen_parameters' of the VAE and text
    encoders and 'source': where the encoders' sizes came from."""
    backbone, others, source, s, channels, factor = _recipe_run(cfg, size)
    rows = switch_table(backbone, others, s, channels, factor, s.lora_rank or DEFAULT_LORA_RANK)
    return {'rows': rows, 'mark': _row_index(rows, s), 'frozen_parameters': others, 'source': source,
            'switches': _public(s)}


def recipe_plan(cfg: Any, size: tuple[int, int] | None = None) -> dict[str, Any]:
    """The plan of a recipe's own run (its row of `recipe_table`, planned alone)."""
    backbone, others, _, s, channels, factor = _recipe_run(cfg, size)
    return {'switches': _public(s), **plan(backbone, others, s, channels, factor)}


def recipe_plan_lines(cfg: Any, size: tuple[int, int] | None = None) -> list[str]:
    """The rendered table of a recipe, its row marked: `scepter model info --cfg` prints these
    lines and the solver logs them at train start."""
    table = recipe_table(cfg, size)
    s = Switches(**table['switches'])
    solver = cfg['SOLVER'] if 'SOLVER' in cfg else cfg
    name = f"{solver['MODEL']['NAME']} over {solver['MODEL']['DIFFUSION_MODEL']['NAME']}"
    return render_plan(table['rows'], plan_title(name, s), table['mark']) + [
        f"frozen VAE and text encoders: {table['frozen_parameters']:,} parameters (text encoders: {table['source']})"]

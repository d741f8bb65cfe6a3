"""The Models tab: what a checkpoint holds (read from headers where it can), and conversion
and LoRA merging through `scepter convert` in a child process (the CLI's own code path)."""
from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

from scepter_core.checkpoint import SAFETENSORS_SUFFIXES, find_step_dir, load_state_dict, read_safetensors_header

from .paths import StudioError

# our and the original LDM names of the parts of a latent diffusion model
COMPONENTS = {'model.diffusion_model.': 'UNet', 'model_ema.': 'UNet (EMA)', 'model.': 'UNet',
              'first_stage_model.': 'autoencoder', 'cond_stage_model.': 'text encoder'}
DIFFUSERS_PARTS = ('unet', 'vae', 'text_encoder')


# the cross-attention context width tells the Stable Diffusion generations apart
FAMILIES = {768: 'Stable Diffusion 1.x', 1024: 'Stable Diffusion 2.x', 2048: 'Stable Diffusion XL'}


def family(shapes: dict[str, tuple[list[int], str]]) -> str:
    """The model family, from the width of the UNet's cross-attention keys."""
    context = next((shape[1] for key, (shape, _) in shapes.items()
                    if key.endswith(('attn2.to_k.weight', 'attn2.to_k.base_layer.weight')) and len(shape) == 2), None)
    if context is None:
        return 'LoRA adapters or a part of a model (no UNet cross-attention)'
    return FAMILIES.get(context, f'latent diffusion, text context width {context}')


def _component(key: str) -> str:
    return next((name for prefix, name in COMPONENTS.items() if key.startswith(prefix)), 'other')


def _shapes(path: Path) -> dict[str, tuple[list[int], str]]:
    """name -> (shape, dtype): from the safetensors header, or by loading a legacy file."""
    if str(path).endswith(SAFETENSORS_SUFFIXES):
        header = read_safetensors_header(path)[0]
        header.pop('__metadata__', None)
        return {k: (v['shape'], v['dtype']) for k, v in header.items()}
    return {k: (list(t.shape), str(t.dtype).replace('torch.', '')) for k, t in load_state_dict(path).items()}


def inspect_checkpoint(path: Path) -> dict:
    """Format (family), components with their parameter counts and dtypes, metadata."""
    from scepter_core.convert import detect_format
    from scepter_core.tuners import lora_file_format
    step = find_step_dir(path)
    weights = step / 'model.safetensors' if step is not None else path
    parts: list[tuple[str, Path]] = []
    if path.is_dir() and step is None:
        parts = [(d, f) for d in DIFFUSERS_PARTS if (path / d).is_dir()
                 for f in sorted((path / d).glob('*.safetensors'))[:1]]
        if not parts:
            raise StudioError(f"'{path}': neither our checkpoint (checkpoints/latest) nor a diffusers folder")
    else:
        parts = [('', weights)]
    lora = lora_file_format(str(weights)) if not path.is_dir() or step is not None else None
    fmt = f'LoRA ({lora})' if lora else detect_format(path if step is None else weights)
    counts: dict[str, int] = defaultdict(int)
    dtypes: dict[str, Counter] = defaultdict(Counter)
    every: dict[str, tuple[list[int], str]] = {}
    for part, file in parts:
        shapes = _shapes(file)
        every.update(shapes)
        for key, (shape, dtype) in shapes.items():
            name = {'unet': 'UNet', 'vae': 'autoencoder', 'text_encoder': 'text encoder'}.get(part) or _component(key)
            n = 1
            for s in shape:
                n *= int(s)
            counts[name] += n
            dtypes[name][dtype] += n
    meta = read_safetensors_header(weights)[0].get('__metadata__', {}) if str(weights).endswith(
        SAFETENSORS_SUFFIXES) else {}
    return {'format': fmt, 'family': family(every), 'files': [str(f) for _, f in parts],
            'components': {k: {'parameters': v, 'dtype': dtypes[k].most_common(1)[0][0]} for k, v in counts.items()},
            'parameters': sum(counts.values()),
            'metadata': {k: v for k, v in meta.items() if len(str(v)) < 300}}


def convert_args(src: Path) -> list[str]:
    """What `scepter convert` reads for a checkpoint picked here: a full run's folder (or step) is
    its last weights file with the recipe saved beside it (--cfg: the model's own sizes); other
    sources (single files, diffusers folders, LoRA runs) go as they are."""
    from scepter_core.inference import adapter_checkpoint, find_config, resolve_weights
    if find_step_dir(src) is None or adapter_checkpoint(str(src)) is not None:
        return [str(src)]
    recipe = find_config(str(src))
    return [resolve_weights(str(src)), *(['--cfg', str(recipe)] if recipe is not None else [])]


def run_convert(src: Path, dst: Path, to: str, merge_lora: list[str] = (), timeout: float = 3600) -> str:
    """`scepter convert SRC DST --to TO [--merge-lora ...]`; returns its output, raises on failure."""
    source, *cfg = convert_args(src)
    cmd = [sys.executable, '-m', 'scepter_cli', 'convert', source, str(dst), '--to', to, *cfg]
    for spec in merge_lora:
        cmd += ['--merge-lora', spec]
    env = {**os.environ, 'COLUMNS': '120'}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    out = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0:
        raise StudioError(out.splitlines()[0] if out else f'scepter convert exited {proc.returncode}')
    return out

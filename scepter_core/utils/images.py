"""Image helpers: tensors to PIL, PNG writing (with generation parameters) and captioned grids."""
from __future__ import annotations

import json
import math
import re
import textwrap
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

PARAMETERS_KEY = 'parameters'  # the PNG text chunk A1111 and the tools that read its files use
_NEGATIVE = 'Negative prompt: '
# `Key: value` pairs of the last line; a value is JSON-quoted when it holds a comma or colon.
_PAIR = re.compile(r'\s*([\w][\w \-/]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def to_pil(image: torch.Tensor) -> Image.Image:
    """[3,H,W] float in [0,1] -> RGB PIL image."""
    arr = (image.detach().float().clamp(0, 1).cpu().permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
    return Image.fromarray(arr)


def format_parameters(prompt: str, n_prompt: str | None, settings: Mapping[str, Any]) -> str:
    """A1111's `parameters` text: the prompt, `Negative prompt: ...`, then one line of
    `Key: value` pairs (None values left out)."""
    pairs = []
    for key, value in settings.items():
        if value is None:
            continue
        text = str(value)
        pairs.append(f'{key}: ' + (json.dumps(text) if re.search(r'[,:\n]', text) else text))
    lines = [prompt, *([_NEGATIVE + n_prompt] if n_prompt else []), ', '.join(pairs)]
    return '\n'.join(lines)


def parse_parameters(text: str) -> tuple[str, str, dict[str, str]]:
    """(prompt, negative prompt, settings) from a `parameters` text; values stay strings."""
    lines = text.strip('\n').split('\n')
    pairs = _PAIR.findall(lines[-1]) if len(lines) > 1 else []
    settings = {}
    if len(pairs) >= 3:  # as A1111 reads it: fewer pairs are part of the prompt
        lines = lines[:-1]
        for key, value in pairs:
            settings[key.strip()] = json.loads(value) if value.startswith('"') else value.strip()
    neg = [i for i, line in enumerate(lines) if line.startswith(_NEGATIVE)]
    cut = neg[0] if neg else len(lines)
    n_prompt = '\n'.join(lines[cut:])[len(_NEGATIVE):] if neg else ''
    return '\n'.join(lines[:cut]), n_prompt, settings


def read_parameters(path: str | Path) -> str | None:
    """The `parameters` text chunk of a PNG (None when it has none)."""
    with Image.open(path) as im:
        return im.text.get(PARAMETERS_KEY) if hasattr(im, 'text') else None


def save_png(image: torch.Tensor | Image.Image, path: str | Path, parameters: str | None = None) -> Path:
    """Write a PNG; `parameters` (see format_parameters) goes into its text chunk."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = None
    if parameters is not None:
        info = PngImagePlugin.PngInfo()
        info.add_text(PARAMETERS_KEY, parameters)
    (image if isinstance(image, Image.Image) else to_pil(image)).save(path, format='PNG', pnginfo=info)
    return path


def make_grid(images: Sequence[torch.Tensor | Image.Image], captions: Sequence[str] | None = None,
              ncols: int | None = None, min_cell: int = 128, caption_lines: int = 3) -> Image.Image:
    """Tile images (upscaled to at least `min_cell` px, nearest) with wrapped captions under each."""
    pils = [im if isinstance(im, Image.Image) else to_pil(im) for im in images]
    if not pils:
        raise ValueError('make_grid got no images')
    ncols = ncols or math.ceil(math.sqrt(len(pils)))
    nrows = math.ceil(len(pils) / ncols)
    w, h = pils[0].size
    scale = max(1, math.ceil(min_cell / max(w, h)))
    cw, ch = w * scale, h * scale
    font = ImageFont.load_default()
    line_h = 12
    cap_h = caption_lines * line_h + 4 if captions else 0
    grid = Image.new('RGB', (ncols * (cw + 4) + 4, nrows * (ch + cap_h + 4) + 4), 'white')
    draw = ImageDraw.Draw(grid)
    chars = max(8, cw // 6)
    for i, im in enumerate(pils):
        r, c = divmod(i, ncols)
        x, y = 4 + c * (cw + 4), 4 + r * (ch + cap_h + 4)
        grid.paste(im.resize((cw, ch), Image.NEAREST) if scale > 1 else im, (x, y))
        if captions:
            for j, line in enumerate(textwrap.wrap(captions[i], chars)[:caption_lines]):
                draw.text((x, y + ch + 2 + j * line_h), line, fill='black', font=font)
    return grid

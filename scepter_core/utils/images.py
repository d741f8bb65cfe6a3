"""Image helpers: tensors to PIL, PNG writing and captioned grids."""
from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont


def to_pil(image: torch.Tensor) -> Image.Image:
    """[3,H,W] float in [0,1] -> RGB PIL image."""
    arr = (image.detach().float().clamp(0, 1).cpu().permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
    return Image.fromarray(arr)


def save_png(image: torch.Tensor | Image.Image, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    (image if isinstance(image, Image.Image) else to_pil(image)).save(path, format='PNG')
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

"""ShapesDataset: images of one coloured shape on a plain background, captioned
"a red circle on a white background", generated in memory (no files, no downloads);
plus a deterministic scorer that reads colour, shape and background back from an image.

HOLDOUT combinations ("blue triangle") never appear in training; eval/test mode yields
their prompts, so a model can be checked on combinations it has not seen."""
from __future__ import annotations

import logging
import random
import re
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..config import Config
from ..errors import ConfigError
from ..registry import DATASETS
from .base import BaseDataset
from .samplers import mix_seed

# Well-separated RGB values, so the nearest palette colour is unambiguous.
COLOR_TABLE: dict[str, tuple[int, int, int]] = {
    'red': (230, 25, 25), 'green': (20, 160, 40), 'blue': (30, 70, 230), 'yellow': (245, 215, 20),
    'purple': (150, 30, 200), 'orange': (245, 130, 0), 'pink': (250, 120, 190), 'cyan': (0, 200, 220),
    'brown': (120, 70, 20), 'white': (255, 255, 255), 'black': (0, 0, 0), 'gray': (128, 128, 128),
}
# (fill of the bounding box, mean row width in its top quarter, in its bottom quarter)
SHAPE_FEATURES: dict[str, tuple[float, float, float]] = {
    'circle': (0.785, 0.614, 0.614), 'square': (1.0, 1.0, 1.0),
    'triangle': (0.5, 0.125, 0.875), 'diamond': (0.5, 0.25, 0.25),
}
PROMPT_FORMAT = 'a {color} {shape} on a {background} background'
FOREGROUND_DISTANCE = 60.0  # RGB distance from the background that counts as foreground
CACHE_LIMIT = 8192  # images kept per process


def make_prompt(color: str, shape: str, background: str) -> str:
    return PROMPT_FORMAT.format(color=color, shape=shape, background=background)


def parse_prompt(prompt: str) -> tuple[str | None, str | None, str | None]:
    """(colour, shape, background) named in a caption; None for a part it lacks."""
    words = re.findall(r'[a-z]+', prompt.lower())
    shape_at = next((i for i, w in enumerate(words) if w in SHAPE_FEATURES), None)
    shape = words[shape_at] if shape_at is not None else None
    before = words[:shape_at] if shape_at is not None else words
    color = next((w for w in reversed(before) if w in COLOR_TABLE), None)
    background = None
    if 'background' in words:
        at = words.index('background')
        background = next((w for w in reversed(words[:at]) if w in COLOR_TABLE), None)
    return color, shape, background


def render_shape(color: str, shape: str, background: str, size: int, box: tuple[int, int, int]) -> Image.Image:
    """A size x size image; `box` = (left, top, side) of the shape's square bounding box."""
    image = Image.new('RGB', (size, size), COLOR_TABLE[background])
    x0, y0, side = box
    x1, y1 = x0 + side - 1, y0 + side - 1
    draw = ImageDraw.Draw(image)
    fill = COLOR_TABLE[color]
    if shape == 'circle':
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif shape == 'square':
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    elif shape == 'triangle':
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    elif shape == 'diamond':
        xm, ym = (x0 + x1) / 2, (y0 + y1) / 2
        draw.polygon([(xm, y0), (x1, ym), (xm, y1), (x0, ym)], fill=fill)
    else:
        raise ValueError(f"unknown shape '{shape}' (known: {', '.join(SHAPE_FEATURES)})")
    return image


# ---- scorer ---------------------------------------------------------------------------------

def _as_rgb_array(image: Any) -> np.ndarray:
    """PIL image, CHW tensor in [0, 1] (or uint8), or HWC uint8 array -> HWC uint8 array."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert('RGB'))
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.is_floating_point():
            t = (t.clamp(0, 1) * 255).round()
        return t.to(torch.uint8).permute(1, 2, 0).numpy()
    return np.asarray(image, dtype=np.uint8)


def nearest_color(rgb: np.ndarray) -> str:
    names = list(COLOR_TABLE)
    table = np.array([COLOR_TABLE[n] for n in names], dtype=np.float64)
    return names[int(np.argmin(((table - rgb) ** 2).sum(axis=1)))]


def _sum_3x3(a: np.ndarray, mode: str) -> np.ndarray:
    """Sum over each pixel's 3x3 neighbourhood (itself included) of an HxW(xC) array."""
    padded = np.pad(a, ((1, 1), (1, 1)) + ((0, 0),) * (a.ndim - 2), mode=mode)
    h, w = a.shape[:2]
    return sum(padded[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3))


def foreground_mask(rgb: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """Pixels far from the background colour, without specks. A clean image (a rendered
    shape) is used as is, so small shapes keep their corners; a noisy one (a model's
    sample) is blurred first, which removes most of the noise."""
    def mask_of(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raw = np.sqrt(((image - bg) ** 2).sum(axis=2)) > FOREGROUND_DISTANCE
        return raw & (_sum_3x3(raw.astype(np.int32), 'constant') >= 3), raw

    mask, raw = mask_of(rgb)
    if raw.sum() - mask.sum() <= 4 + 0.01 * raw.sum():  # at most the corners of a clean shape
        return mask
    return mask_of(_sum_3x3(rgb, 'edge') / 9.0)[0]


def shape_features(mask: np.ndarray) -> tuple[float, float, float] | None:
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if len(rows) < 3 or len(cols) < 3:
        return None
    box = mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    widths = box.sum(axis=1) / box.shape[1]
    band = max(1, round(box.shape[0] / 4))
    return float(box.mean()), float(widths[:band].mean()), float(widths[-band:].mean())


def classify_shape(mask: np.ndarray) -> str | None:
    features = shape_features(mask)
    if features is None:
        return None
    return min(SHAPE_FEATURES, key=lambda s: sum((a - b) ** 2 for a, b in zip(features, SHAPE_FEATURES[s])))


def analyse_image(image: Any) -> dict[str, str | None]:
    """Background = nearest palette colour of the border; foreground = pixels far from it
    (colour: nearest palette colour of their median; shape: nearest bounding-box profile)."""
    rgb = _as_rgb_array(image).astype(np.float64)
    h, w = rgb.shape[:2]
    b = max(1, min(h, w) // 32)
    border = np.concatenate([rgb[:b].reshape(-1, 3), rgb[-b:].reshape(-1, 3),
                             rgb[:, :b].reshape(-1, 3), rgb[:, -b:].reshape(-1, 3)])
    bg = np.median(border, axis=0)
    mask = foreground_mask(rgb, bg)
    found = mask.sum() >= max(4, h * w // 400)
    return {'background': nearest_color(bg),
            'color': nearest_color(np.median(rgb[mask], axis=0)) if found else None,
            'shape': classify_shape(mask) if found else None}


def score_image(image: Any, prompt: str) -> dict[str, bool]:
    """Whether the image shows the prompt's colour, shape and background."""
    color, shape, background = parse_prompt(prompt)
    seen = analyse_image(image)
    return {'color': color is not None and seen['color'] == color,
            'shape': shape is not None and seen['shape'] == shape,
            'background': background is not None and seen['background'] == background}


# ---- dataset --------------------------------------------------------------------------------

@DATASETS.register_class()
class ShapesDataset(BaseDataset):
    """Train items: `{'img': PIL, 'prompt': str, 'meta': {...}}`; eval/test items: the prompt
    of each held-out combination (all combinations if HOLDOUT is empty) on each background,
    with meta 'image_size'."""

    para_dict = {
        'IMAGE_SIZE': {'value': 64, 'type': int, 'min': 1, 'max': 65536, 'description': 'Image side in pixels.'},
        'NUM_SAMPLES': {'value': 1000, 'type': int, 'description': 'Training images (records).'},
        'COLORS': {'value': ['red', 'green', 'blue', 'yellow', 'purple', 'orange'], 'type': list,
                   'description': f"Shape colours, from: {', '.join(COLOR_TABLE)}."},
        'SHAPES': {'value': ['circle', 'square', 'triangle'], 'type': list,
                   'description': f"Shapes, from: {', '.join(SHAPE_FEATURES)}."},
        'BACKGROUNDS': {'value': ['white', 'black', 'gray'], 'type': list,
                        'description': 'Background colours (same names as COLORS).'},
        'HOLDOUT': {'value': [], 'type': list,
                    'description': "'colour shape' pairs kept out of training, e.g. ['blue triangle']."},
        'SEED': {'value': 2023, 'type': int, 'description': 'Seed of positions and sizes.'},
        'SIZE_RANGE': {'value': [0.35, 0.65], 'type': list,
                       'description': 'Shape side as a fraction of the image side: [min, max].'},
        'REPEATS': {'value': 1, 'type': int,
                    'description': 'Eval/test: prompts per combination (each sampled from its own noise).'},
    }

    def __init__(self, cfg: Config | dict | None = None, logger: logging.Logger | None = None):
        super().__init__(cfg, logger)
        self._check_names('COLORS', COLOR_TABLE)
        self._check_names('BACKGROUNDS', COLOR_TABLE)
        self._check_names('SHAPES', SHAPE_FEATURES)
        self.holdout = self._parse_holdout()
        c = self.cfg
        lo, hi = c.SIZE_RANGE
        if c.IMAGE_SIZE < 16 or c.NUM_SAMPLES < 1 or c.REPEATS < 1 or not 0.05 <= lo <= hi <= 0.8:
            raise ConfigError(f"'{self.key_path('IMAGE_SIZE')}': need IMAGE_SIZE >= 16, NUM_SAMPLES >= 1, "
                              f'REPEATS >= 1 and 0.05 <= SIZE_RANGE[0] <= SIZE_RANGE[1] <= 0.8')
        every = [(col, s, bg) for col in c.COLORS for s in c.SHAPES for bg in c.BACKGROUNDS if col != bg]
        self.train_combos = [x for x in every if (x[0], x[1]) not in self.holdout]
        self.eval_combos = [x for x in every if (x[0], x[1]) in self.holdout] or every
        if not self.train_combos:
            raise ConfigError(f"'{self.key_path('HOLDOUT')}': every colour/shape pair is held out")
        self._cache: dict[int, Image.Image] = {}

    def _check_names(self, key: str, known: dict) -> None:
        unknown = [n for n in self.cfg[key] if n not in known]
        if unknown or not self.cfg[key]:
            raise ConfigError(f"'{self.key_path(key)}': unknown or empty {unknown}; known: {', '.join(known)}")

    def _parse_holdout(self) -> set[tuple[str, str]]:
        pairs = set()
        for entry in self.cfg.HOLDOUT:
            parts = str(entry).split()
            if len(parts) != 2 or parts[0] not in COLOR_TABLE or parts[1] not in SHAPE_FEATURES:
                raise ConfigError(f"'{self.key_path('HOLDOUT')}': expected 'colour shape' such as "
                                  f"'blue triangle', got {entry!r}")
            pairs.add((parts[0], parts[1]))
        return pairs

    def num_records(self) -> int:
        return self.cfg.NUM_SAMPLES if self.mode == 'train' else len(self.eval_combos) * self.cfg.REPEATS

    def combo(self, index: int) -> tuple[str, str, str]:
        combos = self.train_combos if self.mode == 'train' else self.eval_combos
        return combos[index % len(combos)]

    def box(self, index: int) -> tuple[int, int, int]:
        """(left, top, side) of record `index`'s shape, from its own seeded RNG."""
        size = self.cfg.IMAGE_SIZE
        rng = random.Random(mix_seed(self.cfg.SEED, index))
        lo, hi = self.cfg.SIZE_RANGE
        margin = max(1, size // 32) + 1  # keep the border (where the scorer reads the background) clear
        side = max(6, min(round(rng.uniform(lo, hi) * size), size - 2 * margin))
        return rng.randint(margin, size - side - margin), rng.randint(margin, size - side - margin), side

    def image(self, index: int) -> Image.Image:
        if index not in self._cache:
            color, shape, background = self.combo(index)
            image = render_shape(color, shape, background, self.cfg.IMAGE_SIZE, self.box(index))
            if len(self._cache) < CACHE_LIMIT:
                self._cache[index] = image
            return image
        return self._cache[index]

    def _get(self, index: int) -> dict:
        color, shape, background = self.combo(index)
        meta = {'data_key': 'shapes', 'color': color, 'shape': shape, 'background': background}
        if self.mode != 'train':
            meta['image_size'] = [self.cfg.IMAGE_SIZE, self.cfg.IMAGE_SIZE]
            return {'prompt': make_prompt(color, shape, background), 'meta': meta}
        return {'img': self.image(index), 'prompt': make_prompt(color, shape, background), 'meta': meta}

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state['_cache'] = {}  # workers regenerate what they need
        return state

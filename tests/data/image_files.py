"""Helpers for the data tests: real image files written with PIL."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

COLORS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200), (200, 30, 200)]


def gradient_image(h: int, w: int, seed: int = 0) -> Image.Image:
    """An image whose pixels are all different, so crops and flips can be checked exactly."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))


def write_image(path: Path, size: tuple[int, int] = (48, 40), color=(200, 30, 30)) -> Path:
    """A solid-colour image of (width, height); PNG or JPEG by suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new('RGB', size, color).save(path)
    return path


def truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    return path


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path

"""Fixtures for the data tests."""
from __future__ import annotations

from pathlib import Path

import pytest
from image_files import COLORS, write_csv, write_image


@pytest.fixture
def pair_folder(tmp_path: Path) -> Path:
    """A folder with train.csv (Target:FILE,Prompt) and 6 images, PNG and JPEG, of varied sizes."""
    folder = tmp_path / 'pairs'
    rows = []
    for i, color in enumerate(COLORS):
        name = f'images/{i}.png' if i % 2 == 0 else f'images/{i}.jpg'
        write_image(folder / name, (40 + 4 * i, 36 + 2 * i), color)
        rows.append([name, f'picture {i}, in colour {color[0]}'])
    write_csv(folder / 'train.csv', ['Target:FILE', 'Prompt'], rows)
    return folder

"""A dependency-free line plot (PIL) for loss curves."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont


def _moving_average(ys: Sequence[float], k: int) -> list[float]:
    out, acc = [], 0.0
    for i, y in enumerate(ys):
        acc += y
        if i >= k:
            acc -= ys[i - k]
        out.append(acc / min(i + 1, k))
    return out


def line_plot(xs: Sequence[float], ys: Sequence[float], path: str | Path, title: str = '', xlabel: str = '',
              smooth: int = 1, size: tuple[int, int] = (640, 400)) -> Path:
    """Raw values in light grey, a moving average (window `smooth`) in blue, labelled axes."""
    w, h = size
    left, right, top, bottom = 60, 20, 30, 40
    img = Image.new('RGB', size, 'white')
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1

    def px(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x0) / (x1 - x0) * (w - left - right),
                h - bottom - (y - y0) / (y1 - y0) * (h - top - bottom))

    d.rectangle([left, top, w - right, h - bottom], outline='black')
    for i in range(5):
        yv = y0 + (y1 - y0) * i / 4
        _, yy = px(x0, yv)
        d.line([left - 4, yy, left, yy], fill='black')
        d.text((4, yy - 6), f'{yv:.3g}', fill='black', font=font)
        xv = x0 + (x1 - x0) * i / 4
        xx, _ = px(xv, y0)
        d.line([xx, h - bottom, xx, h - bottom + 4], fill='black')
        d.text((xx - 10, h - bottom + 8), f'{xv:.0f}', fill='black', font=font)
    if len(xs) > 1:
        d.line([px(x, y) for x, y in zip(xs, ys)], fill=(200, 200, 200), width=1)
        d.line([px(x, y) for x, y in zip(xs, _moving_average(ys, smooth))], fill=(30, 90, 200), width=2)
    d.text((left, 8), title, fill='black', font=font)
    d.text((w // 2 - 10, h - 16), xlabel, fill='black', font=font)
    path = Path(path)
    img.save(path)
    return path

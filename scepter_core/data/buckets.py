"""Aspect-ratio buckets: the sizes a pixel budget allows, the bucket an image goes to, and
where its pixels land in it (the resize, the crop window, SDXL's size conditioning).

A bucket is an aligned (height, width) whose area stays within RESOLUTION**2. An image goes
to the bucket whose aspect ratio is nearest its own (on a log scale, so 1:2 and 2:1 are as far
from 1:1). Without UPSCALE, an image smaller than that bucket gets a bucket of its own size
(floored to the alignment) rather than being enlarged."""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ConfigError

CROPS = ('center', 'random', 'none')


def bucket_sizes(resolution: int, alignment: int = 64, max_aspect: float = 4.0) -> list[tuple[int, int]]:
    """The maximal aligned (h, w) with h * w <= resolution**2 and aspect within max_aspect (no other
    bucket is as tall and wider, or as wide and taller); sorted by aspect ratio (h / w)."""
    if resolution < alignment or alignment < 1 or max_aspect < 1:
        raise ConfigError(f'buckets: RESOLUTION {resolution} must be >= ALIGNMENT {alignment} >= 1 and '
                          f'MAX_ASPECT {max_aspect} >= 1')
    budget = resolution * resolution
    sizes = set()
    for w in range(alignment, budget // alignment + 1, alignment):
        h = budget // w // alignment * alignment
        if h >= alignment and max(h, w) / min(h, w) <= max_aspect:
            sizes.add((h, w))
            sizes.add((w, h))
    # maximal only: no other bucket is as tall and wider, or as wide and taller
    sizes = {(h, w) for h, w in sizes if not any(bh == h and bw > w or bw == w and bh > h for bh, bw in sizes)}
    return sorted(sizes, key=lambda s: (s[0] / s[1], s[0]))


def aspect_distance(h: int, w: int, bh: int, bw: int) -> float:
    return abs(math.log(h / w) - math.log(bh / bw))


def nearest_bucket(h: int, w: int, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket nearest the aspect ratio of an h x w image (ties: the larger bucket)."""
    return min(buckets, key=lambda b: (aspect_distance(h, w, *b), -b[0] * b[1]))


def assign_bucket(h: int, w: int, buckets: list[tuple[int, int]], alignment: int,
                  upscale: bool = False) -> tuple[int, int] | None:
    """The bucket of an h x w image; None when it is smaller than one alignment step."""
    bh, bw = nearest_bucket(h, w, buckets)
    if upscale or (bh <= h and bw <= w):
        return bh, bw
    budget = max(b[0] * b[1] for b in buckets)
    scale = min(1.0, math.sqrt(budget / (h * w)))
    own = (int(h * scale) // alignment * alignment, int(w * scale) // alignment * alignment)
    return own if min(own) >= alignment else None


@dataclass(frozen=True)
class Placement:
    """How an image becomes a bucket-sized sample: resize to `resized`, then take the
    `target` window whose top-left corner is `crop` in resized pixels (negative: padding)."""
    original: tuple[int, int]
    resized: tuple[int, int]
    crop: tuple[int, int]
    target: tuple[int, int]


def place(h: int, w: int, bucket: tuple[int, int], crop: str, draw: callable | None = None) -> Placement:
    """center/random: scale to cover the bucket and crop (random offsets from `draw(high)`, an
    integer in [0, high]); none: scale to fit inside and pad evenly (the crop is negative)."""
    bh, bw = bucket
    if crop == 'none':
        s = min(bh / h, bw / w)
        rh, rw = min(bh, max(1, round(h * s))), min(bw, max(1, round(w * s)))
        return Placement((h, w), (rh, rw), (-((bh - rh) // 2), -((bw - rw) // 2)), bucket)
    if crop not in CROPS:
        raise ConfigError(f"buckets: CROP must be one of {', '.join(CROPS)}, got {crop!r}")
    s = max(bh / h, bw / w)
    rh, rw = max(bh, round(h * s)), max(bw, round(w * s))
    if crop == 'random' and draw is not None:
        top, left = draw(rh - bh), draw(rw - bw)
    else:
        top, left = (rh - bh) // 2, (rw - bw) // 2
    return Placement((h, w), (rh, rw), (top, left), bucket)

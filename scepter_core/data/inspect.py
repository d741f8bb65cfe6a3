"""What a dataset path holds, for `scepter data inspect`: readable images (fully decoded, so
truncated files show), bad files with the reason, images without a caption, the bucket table
at a pixel budget, and a histogram of aspect ratios."""
from __future__ import annotations

import math
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from . import sources
from .buckets import assign_bucket, bucket_sizes
from .errors import BadSampleError
from .images import DEFAULT_MAX_PIXELS, decode_rgb


@dataclass
class Inspection:
    path: str
    kind: str
    images: int = 0
    bad: dict[str, str] = field(default_factory=dict)
    no_caption: list[str] = field(default_factory=list)
    buckets: dict[tuple[int, int], int] = field(default_factory=dict)
    aspects: list[float] = field(default_factory=list)  # width / height of each readable image

    def to_json(self) -> dict:
        return {'images': self.images, 'bad': len(self.bad), 'no_caption': len(self.no_caption),
                'buckets': [{'size': list(s), 'count': n} for s, n in sorted(self.buckets.items())],
                'bad_files': [{'path': p, 'reason': r} for p, r in sorted(self.bad.items())], 'kind': self.kind}

    BUCKET_COLUMNS = ('height x width', 'aspect (w/h)', 'images', 'share')

    def bucket_rows(self) -> list[tuple[str, str, str, str]]:
        """The bucket table as the CLI and the Studio show it (BUCKET_COLUMNS)."""
        total = sum(self.buckets.values()) or 1
        return [(f'{h} x {w}', f'{w / h:.2f}', str(n), f'{n / total:.1%}') for (h, w), n in self.buckets.items()]


def inspect_source(path: str, resolution: int = 512, alignment: int = 64, max_aspect: float = 4.0,
                   upscale: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS, threads: int = 8) -> Inspection:
    kind = sources.detect(path)
    records = sources.records(path, kind)
    table = bucket_sizes(resolution, alignment, max_aspect)

    def size_of(rec: dict) -> tuple[int, int] | BadSampleError:
        try:
            image = decode_rgb(sources.read_record(rec), rec['img_path'], max_pixels)
            return image.height, image.width
        except BadSampleError as e:
            return e
        except OSError as e:
            return BadSampleError(rec['img_path'], f'{type(e).__name__}: {e}')

    with ThreadPoolExecutor(max(1, threads)) as pool:
        results = list(pool.map(size_of, records))
    report, counts = Inspection(path, kind), Counter()
    for rec, res in zip(records, results):
        if isinstance(res, BadSampleError):
            report.bad[rec['img_path']] = res.reason
            continue
        h, w = res
        report.images += 1
        report.aspects.append(w / h)
        if not rec['has_caption']:
            report.no_caption.append(rec['img_path'])
        bucket = assign_bucket(h, w, table, alignment, upscale)
        if bucket is None:
            report.bad[rec['img_path']] = f'{h}x{w} is smaller than ALIGNMENT {alignment}'
            report.images -= 1
            continue
        counts[bucket] += int(rec['repeats'])
    report.buckets = dict(sorted(counts.items()))
    return report


def aspect_histogram(aspects: list[float], path: str | Path, bins: int = 17, size=(640, 360)) -> Path:
    """Bars of log2(width / height) from 1:4 to 4:1 (outside values in the end bars)."""
    lo, hi = -2.0, 2.0
    counts = [0] * bins
    for a in aspects:
        x = min(max(math.log2(a), lo), hi)
        counts[min(int((x - lo) / (hi - lo) * bins), bins - 1)] += 1
    w, h = size
    left, right, top, bottom = 40, 20, 30, 40
    img = Image.new('RGB', size, 'white')
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    peak = max(counts) or 1
    bar = (w - left - right) / bins
    for i, n in enumerate(counts):
        x0 = left + i * bar
        y0 = h - bottom - n / peak * (h - top - bottom)
        d.rectangle([x0 + 1, y0, x0 + bar - 1, h - bottom], fill=(30, 90, 200))
        if n:
            d.text((x0 + 2, y0 - 12), str(n), fill='black', font=font)
    d.line([left, h - bottom, w - right, h - bottom], fill='black')
    for label, v in (('1:4', -2), ('1:2', -1), ('1:1', 0), ('2:1', 1), ('4:1', 2)):
        x = left + (v - lo) / (hi - lo) * (w - left - right)
        d.text((x - 8, h - bottom + 6), label, fill='black', font=font)
    d.text((left, 8), f'aspect ratio (width:height) of {len(aspects)} images', fill='black', font=font)
    path = Path(path)
    img.save(path)
    return path

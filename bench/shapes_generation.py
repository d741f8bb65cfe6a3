"""Rendering the generated shapes dataset against reading the same images from PNG files.

    python bench/shapes_generation.py [--size 32] [--items 64] [--steps 20]

The default example trains on images drawn on the fly (ShapesDataset); a file dataset would
decode each one from disk instead. Both run in this process, interleaved on the same indices
(common.time_interleaved): `items` images per call, median over `steps` calls. The ratio is
PNG time / render time (above 1: rendering is the faster way to get an image). Was a wall-clock
assertion in tests/data/test_shapes.py; timing lives here, where load cannot fail a test.
Writes bench/results/shapes_generation.json."""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from common import ratio, report, time_interleaved
from PIL import Image

WARMUP = 2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--size', type=int, default=32, help='IMAGE_SIZE (the example: 32)')
    ap.add_argument('--items', type=int, default=64, help='images per timed call')
    ap.add_argument('--steps', type=int, default=20)
    args = ap.parse_args()
    from scepter_core.registry import DATASETS
    block = {'NAME': 'ShapesDataset', 'IMAGE_SIZE': args.size}
    # A dataset keeps what it rendered (later epochs read that): each timed call renders new
    # indices, so `render` is the first epoch's cost and `cached` the later epochs'.
    fresh = DATASETS.build({**block, 'NUM_SAMPLES': args.items * (args.steps + WARMUP)})
    data = DATASETS.build({**block, 'NUM_SAMPLES': args.items})
    start = iter(range(0, len(fresh), args.items))
    with tempfile.TemporaryDirectory() as tmp:
        files = [Path(tmp) / f'{i}.png' for i in range(args.items)]
        for i, path in enumerate(files):
            data[i]['img'].save(path)

        def render() -> None:
            first = next(start)
            for i in range(first, first + args.items):
                fresh[i]

        def cached() -> None:
            for i in range(args.items):
                data[i]

        def decode() -> None:
            for path in files:
                with Image.open(path) as im:
                    im.convert('RGB').load()

        times = time_interleaved({'render': render, 'cached': cached, 'png': decode}, args.steps, WARMUP)
    per_item = {k: v['wall_s'] / args.items * 1e6 for k, v in times.items()}
    rows = [['ShapesDataset item, first epoch', per_item['render'], 1e6 / per_item['render']],
            ['ShapesDataset item, later epochs', per_item['cached'], 1e6 / per_item['cached']],
            ['PNG file decode', per_item['png'], 1e6 / per_item['png']],
            ['ratio png / render', ratio(per_item['png'], per_item['render']), '']]
    report('shapes_generation', f'{args.size} px images, {os.cpu_count()} cores', ['source', 'us / item', 'items / s'],
           rows, {'times': times, 'items': args.items})


if __name__ == '__main__':
    main()

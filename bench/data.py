"""Loader throughput: decoded + transformed + bucketed images/s per worker count, against a
plain torch DataLoader over the same files (PIL open, resize shorter side, center crop, to
tensor), and one tiny-example epoch (loader + VAE encode) without and with the disk cache.

    python bench/data.py [--images 256] [--resolution 64] [--workers 0 1 2] [--batch 8] [--threads 1]

The folder is generated (random sizes 48-192 px, PNG + JPEG, sidecar captions). The VAE is the
tiny example's (examples/tiny_shapes_vae.yaml, random weights: speed does not depend on them).
An epoch "after the first" reads latents from SOLVER.CACHE_DIR-style shards instead of
running the VAE, and its batches read no image (their latent_key is on disk: the probe says so).
Writes bench/results/data.json."""
from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import ROOT, report, set_threads

sys.path.insert(0, str(ROOT))


def make_folder(root: Path, n: int, seed: int = 0) -> Path:
    from PIL import Image
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        h, w = (int(v) for v in rng.integers(48, 193, size=2))
        pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / (f'{i:05d}.png' if i % 2 else f'{i:05d}.jpg'), quality=90)
        (root / f'{i:05d}.txt').write_text(f'image {i}, random pixels')
    return root


class PlainFolder:
    """What a user would write first: a torch Dataset over the same files, one fixed square size."""

    def __init__(self, root: Path, size: int):
        self.files = sorted(p for p in root.iterdir() if p.suffix in ('.png', '.jpg'))
        self.size = size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        import torch
        from PIL import Image
        with Image.open(self.files[i]) as im:
            im = im.convert('RGB')
            s = self.size / min(im.size)
            im = im.resize((max(self.size, round(im.width * s)), max(self.size, round(im.height * s))),
                           Image.Resampling.BICUBIC)
            left, top = (im.width - self.size) // 2, (im.height - self.size) // 2
            im = im.crop((left, top, left + self.size, top + self.size))
        x = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float() / 127.5 - 1
        return {'image': x, 'prompt': self.files[i].with_suffix('.txt').read_text()}


def images_per_second(loader, batches: int) -> float:
    it = iter(loader)
    next(it)  # workers started, first batch out: not part of the rate
    t0, n = time.perf_counter(), 0
    for batch in itertools.islice(it, batches):
        n += batch['image'].shape[0]
    return n / (time.perf_counter() - t0)


def bucket_dataset(folder: Path, args, workers: int):
    from scepter_core.registry import DATASETS
    return DATASETS.build({'NAME': 'BucketImageDataset', 'DATA_DIR': str(folder), 'RESOLUTION': args.resolution,
                           'ALIGNMENT': 16, 'CROP': 'center', 'BATCH_SIZE': args.batch, 'NUM_WORKERS': workers})


def tiny_vae():
    import torch
    from scepter_core.config import Config
    from scepter_core.registry import MODELS
    block = Config.load(str(ROOT / 'examples' / 'tiny_shapes_vae.yaml')).SOLVER.MODEL
    torch.manual_seed(0)
    return MODELS.build(block).eval().requires_grad_(False)


def epoch_seconds(data, vae, cache, steps: int) -> float:
    import torch
    from scepter_core.data import build_dataloader
    t0 = time.perf_counter()
    with torch.no_grad():
        for batch in itertools.islice(iter(build_dataloader(data, seed=0)), steps):
            if cache is not None:
                cache.encode_images(vae, batch.get('image'), batch.get('latent_key'))
            else:
                vae.encode(batch['image'])
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--images', type=int, default=256)
    ap.add_argument('--resolution', type=int, default=64)
    ap.add_argument('--workers', type=int, nargs='+', default=[0, 1, 2])
    ap.add_argument('--batch', type=int, default=8)
    ap.add_argument('--threads', type=int, default=1)
    args = ap.parse_args()
    set_threads(args.threads)
    from torch.utils.data import DataLoader

    from scepter_core.data import build_dataloader
    from scepter_core.models.networks.latent_cache import DiskStore, LatentCache
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_folder(Path(tmp) / 'imgs', args.images)
        batches = max(4, args.images // args.batch - 1)
        rows = []
        for w in args.workers:
            data = bucket_dataset(folder, args, w)
            ours = images_per_second(build_dataloader(data, seed=0), batches)
            plain = images_per_second(DataLoader(PlainFolder(folder, args.resolution), batch_size=args.batch,
                                                 shuffle=True, num_workers=w), batches)
            rows.append([f'{w} workers', ours, plain, plain / ours])
        data = bucket_dataset(folder, args, max(args.workers))
        build_dataloader(data, seed=0)  # attaches the sampler: its epoch length
        steps = data.sampler.steps_per_epoch
        vae = tiny_vae()
        uncached = epoch_seconds(data, vae, None, steps)
        filling = LatentCache(disk=DiskStore(Path(tmp) / 'cache'))
        first = epoch_seconds(data, vae, filling, steps)
        filling.disk.close()
        reading = LatentCache(disk=DiskStore(Path(tmp) / 'cache'))  # a later run: nothing in memory
        data.attach_latent_probe(reading.disk.probe(reading.named_scope(vae, next(vae.parameters()).dtype)))
        later = epoch_seconds(data, vae, reading, steps)
    report('data', f'loader images/s ({args.images} images, {args.resolution}x{args.resolution} budget, '
                   f'batch {args.batch}, {args.threads} thread(s)); plain/ours above 1: plain faster',
           ['loader', 'ours img/s', 'plain DataLoader img/s', 'plain/ours'], rows,
           extra={'epoch_seconds': {'no cache': uncached, 'first (fills the cache)': first,
                                    'after the first (disk cache)': later, 'rows read from disk': reading.disk_hits,
                                    'speed-up after the first': uncached / later}})
    print(f'epoch of {steps} batches (loader + VAE encode): no cache {uncached:.2f} s, first cached {first:.2f} s, '
          f'after the first {later:.2f} s ({reading.disk_hits} rows from disk, {reading.misses} computed): '
          f'{uncached / later:.2f}x')


if __name__ == '__main__':
    main()

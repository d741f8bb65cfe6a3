"""BucketImageDataset: images of any shape from a DATA_DIR (folder with sidecar captions,
metadata.jsonl, parquet, CSV/TXT list), each trained in its aspect-ratio bucket.

Construction reads every image's header once (threads; through fsspec), so that bad files are
known, counted and named once before training, and each image's bucket is fixed. Items carry
`image`, `prompt`, and SDXL's `original_size`, `crop_coords` and `target_size` ([h, w] / [top, left]).
Use it with BucketSampler (the default SAMPLER here): each batch comes from one bucket."""
from __future__ import annotations

import hashlib
import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import PIL
import torch
from PIL import Image, ImageOps

from ..config import Config
from ..errors import ConfigError
from ..registry import DATASETS
from . import sources
from .base import BAD_PATHS_KEY, SKIPPED_KEY, BaseDataset
from .buckets import CROPS, Placement, assign_bucket, bucket_sizes, place
from .captions import CAPTION_KEYS, MakeCaption
from .errors import BadSampleError
from .file_index import FileIndex
from .images import DEFAULT_MAX_PIXELS, decode_rgb, image_size
from .paths import PATH_KEYS
from .transforms.base import RNG_KEY, item_randint, item_uniform
from .transforms.functional import PIL_INTERPOLATION

TO_TENSOR = [{'NAME': 'ImageToTensor', 'INPUT_KEY': ['img'], 'OUTPUT_KEY': ['img']},
             {'NAME': 'Normalize', 'MEAN': [0.5, 0.5, 0.5], 'STD': [0.5, 0.5, 0.5],
              'INPUT_KEY': ['img'], 'OUTPUT_KEY': ['image']}]
BUCKET_KEYS = {
    'RESOLUTION': {'value': 512, 'type': (int, list),
                   'description': 'Pixel budget: buckets hold at most RESOLUTION**2 pixels; a list trains '
                                  'every image at each budget (multi-resolution).'},
    'ALIGNMENT': {'value': 64, 'type': int,
                  'description': 'Bucket sides are multiples of this (at least the VAE factor x the UNet downsampling).'},
    'MAX_ASPECT': {'value': 4.0, 'type': (int, float), 'description': 'Widest bucket aspect ratio (long / short side).'},
    'CROP': {'value': 'center', 'choices': CROPS,
             'description': 'center/random: scale to cover the bucket and crop; none: scale to fit and pad.'},
    'FLIP': {'value': 0.0, 'type': (int, float),
             'description': 'Probability of mirroring a sample left-right (the two sides are cached apart).'},
    'UPSCALE': {'value': False, 'description': 'Enlarge images smaller than their bucket (false: such an image '
                                               'gets a bucket of its own size).'},
    'FILL': {'value': 0, 'type': int, 'description': 'Pixel value (0-255) of the padding with CROP none.'},
    'INTERPOLATION': {'value': 'bicubic', 'choices': tuple(PIL_INTERPOLATION), 'description': 'Resize filter.'},
}


def apply_placement(image: Image.Image, p: Placement, interpolation: str = 'bicubic', fill: int = 0) -> Image.Image:
    if (image.height, image.width) != p.resized:
        image = image.resize((p.resized[1], p.resized[0]), PIL_INTERPOLATION[interpolation])
    top, left = p.crop
    if top >= 0 and left >= 0:
        return image.crop((left, top, left + p.target[1], top + p.target[0]))
    canvas = Image.new('RGB', (p.target[1], p.target[0]), (fill,) * 3)
    canvas.paste(image, (-left, -top))
    return canvas


def bytes_digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def pixel_signature(cfg: Config, transforms: list) -> str | None:
    """What decides the pixels an encoder sees besides the file's bytes and its placement: the
    resize filter, the padding and every TRANSFORMS block; None when one of them draws at random
    (the pixels then follow from no key, and caches key latents by the pixels themselves)."""
    if not all(getattr(t, 'deterministic', False) for t in transforms):
        return None
    return repr((cfg.INTERPOLATION, cfg.FILL, PIL.__version__, [t.cfg.to_dict() for t in transforms]))


class PlanPlacement:
    """Pipeline step before any pixel is decoded: where an image of item['_size'] lands in
    item['_bucket'] (random crops and FLIP drawn from the item's generator), SDXL's size
    conditioning, and with a pixel `signature` the `latent_key` that names the pixels (the file's
    digest, the placement, the flip and the signature), under which latent caches keep them."""

    def __init__(self, crop: str, flip: float, signature: str | None):
        self.crop, self.flip, self.signature = crop, flip, signature

    def __call__(self, item: dict) -> dict:
        h, w = item.pop('_size')
        p = place(h, w, item.pop('_bucket'), self.crop, lambda high: item_randint(item, high))
        flip = self.flip > 0 and item_uniform(item) < self.flip  # no draw without FLIP: streams as before
        item['_placement'] = (p, flip)
        item['original_size'] = torch.tensor(p.original)
        item['crop_coords'] = torch.tensor(p.crop)
        item['target_size'] = torch.tensor(p.target)
        digest = item.pop('_digest', None)
        if self.signature is not None and digest is not None:
            item['latent_key'] = hashlib.blake2b(repr((digest, p, flip, self.signature)).encode(),
                                                 digest_size=16).hexdigest()
        return item


class ApplyPlacement:
    """Pipeline step: item['img'] resized, cropped (or padded) and flipped as planned."""

    def __init__(self, interpolation: str, fill: int):
        self.interpolation, self.fill = interpolation, fill

    def __call__(self, item: dict) -> dict:
        p, flip = item.pop('_placement')
        image = apply_placement(item['img'], p, self.interpolation, self.fill)
        item['img'] = ImageOps.mirror(image) if flip else image
        return item


class BucketPipeline:
    """What the bucket datasets share: their steps before and after decoding, and the latent
    cache's probe (set by the solver with SOLVER.CACHE_DIR: `probe(keys)` is true when every
    latent is on disk) that lets a batch skip reading its images."""

    latent_probe: Callable[[list[str]], bool] | None = None

    def install_bucket_steps(self) -> None:
        c = self.cfg
        self.signature = pixel_signature(c, self.pipeline.transforms)
        self.plan_steps = [PlanPlacement(c.CROP, float(c.FLIP), self.signature),
                           MakeCaption({k: c[k] for k in CAPTION_KEYS})]
        self.pipeline.transforms[:0] = [*self.plan_steps, ApplyPlacement(c.INTERPOLATION, c.FILL)]

    def attach_latent_probe(self, probe: Callable[[list[str]], bool]) -> None:
        if self.signature is None:
            self.logger.info(f'{self.where}: a TRANSFORMS block draws at random, so latents are keyed by their '
                             f'pixels and images are decoded every time (FLIP and CROP draw in a cacheable way)')
            return
        self.latent_probe = probe

    def planned(self, item: dict) -> dict:
        """`item` (a record's fields and its generator) through the steps before decoding."""
        for step in self.plan_steps:
            item = step(item)
        item.pop('_placement')
        item.pop(RNG_KEY, None)
        item[SKIPPED_KEY], item[BAD_PATHS_KEY] = 0, []
        return item

    def all_cached(self, items: list[dict]) -> bool:
        return self.latent_probe is not None and all('latent_key' in i for i in items) and \
            self.latent_probe([i['latent_key'] for i in items])


@DATASETS.register_class(aliases=('ImageFolderDataset',))
class BucketImageDataset(BucketPipeline, BaseDataset):
    """Images of any shape from DATA_DIR (folder, metadata.jsonl, parquet, shards, CSV/TXT), each in its aspect bucket."""

    para_dict = {
        'DATA_DIR': {'value': '', 'type': (str, list), 'description': 'Source path(s): folder, metadata.jsonl or '
                                                                      'parquet folder, CSV/TXT list; any fsspec URL.'},
        **BUCKET_KEYS,
        'CAPTION_EXTENSIONS': {'value': ['.txt', '.caption'], 'type': list, 'description': 'Sidecar caption suffixes.'},
        'DEFAULT_CAPTION': {'value': '', 'type': str, 'description': 'Caption of images that have none.'},
        'MAX_PIXELS': {'value': DEFAULT_MAX_PIXELS, 'type': int,
                       'description': 'Images with more pixels are skipped as decompression bombs.'},
        **CAPTION_KEYS, **PATH_KEYS,
        'SCAN_THREADS': {'value': 8, 'type': int, 'description': 'Threads reading image headers at start.'},
        'TRANSFORMS': {'value': TO_TENSOR, 'type': list, 'registry': 'TRANSFORMS',
                       'description': "Applied after the bucket crop and caption ('img' PIL, 'prompt')."},
        'SAMPLER': {'value': {'NAME': 'BucketSampler'}, 'type': dict, 'registry': 'SAMPLERS',
                    'description': 'Sampler block; BucketSampler keeps each batch in one bucket.'},
    }

    takes_cache_dir = True  # the solver passes SOLVER.CACHE_DIR (with CACHE_LATENTS) for the file index

    def __init__(self, cfg: Config | dict | None = None, logger: logging.Logger | None = None,
                 cache_dir: str | None = None):
        super().__init__(cfg, logger)
        c = self.cfg
        paths = [c.DATA_DIR] if isinstance(c.DATA_DIR, str) else list(c.DATA_DIR)
        if not any(paths):
            raise ConfigError(f"'{self.key_path('DATA_DIR')}': set the data path (folder, list file, metadata.jsonl)")
        self.resolutions = [c.RESOLUTION] if isinstance(c.RESOLUTION, int) else list(c.RESOLUTION)
        self.tables = [bucket_sizes(r, c.ALIGNMENT, c.MAX_ASPECT) for r in self.resolutions]
        records = [r for p in paths for r in sources.records(p, caption_exts=tuple(c.CAPTION_EXTENSIONS),
                                                             allow_remote=bool(c.ALLOW_REMOTE_PATHS),
                                                             allow_outside=bool(c.ALLOW_OUTSIDE_ROOT))]
        self.bad: dict[str, str] = {}
        self.records, self.sizes, self.digests = self._scan(records, FileIndex(cache_dir) if cache_dir else None)
        self.entries: list[tuple[int, tuple[int, int]]] = []  # (record, bucket) per sample of an epoch
        for table in self.tables:
            for i, (rec, (h, w)) in enumerate(zip(self.records, self.sizes)):
                bucket = assign_bucket(h, w, table, c.ALIGNMENT, bool(c.UPSCALE))
                if bucket is None:
                    self.bad.setdefault(rec['img_path'], f'{h}x{w} is smaller than ALIGNMENT {c.ALIGNMENT}')
                    continue
                self.entries += [(i, bucket)] * int(rec['repeats'])
        if not self.entries:
            raise ConfigError(f"'{self.key_path('DATA_DIR')}': no readable image in {paths} "
                              f"({len(self.bad)} bad, e.g. {next(iter(self.bad.items()), '')})")
        self.buckets = sorted({b for _, b in self.entries})
        ids = {b: k for k, b in enumerate(self.buckets)}
        self.groups = [ids[b] for _, b in self.entries]
        self.members: list[list[int]] = [[] for _ in self.buckets]
        for v, g in enumerate(self.groups):
            self.members[g].append(v)
        for path, reason in self.bad.items():
            self.logger.warning(f"{self.where}: skipped '{path}': {reason}")
        self.install_bucket_steps()

    def _scan(self, records: list[dict], index: FileIndex | None) -> tuple[list[dict], list[tuple[int, int]], list[str]]:
        """The readable records with their (height, width) and digest, read from each file's
        header and bytes, or from `index` for files it knows unchanged (then none is opened)."""
        max_pixels = self.cfg.MAX_PIXELS

        def probe(rec: dict) -> tuple[str, int, int] | BadSampleError:
            name = rec['img_path']
            try:
                stat = sources.record_stat(rec) if index is not None else ''
                known = index.get(name, stat) if index is not None else None
                if known is not None:
                    if known[1] * known[2] > max_pixels:
                        return BadSampleError(name, f'decompression bomb: {known[2]}x{known[1]} is more than '
                                                    f'{max_pixels} pixels (MAX_PIXELS)')
                    return known
                data = sources.read_record(rec)
                h, w = image_size(data, name, max_pixels)
            except BadSampleError as e:
                return e
            except OSError as e:
                return BadSampleError(name, f'{type(e).__name__}: {e}')
            digest = bytes_digest(data)
            if index is not None:
                index.put(name, stat, digest, h, w)
            return digest, h, w
        with ThreadPoolExecutor(max(1, self.cfg.SCAN_THREADS)) as pool:
            results = list(pool.map(probe, records))
        if index is not None:
            index.flush()
        kept, sizes, digests = [], [], []
        for rec, res in zip(records, results):
            if isinstance(res, BadSampleError):
                self.bad[rec['img_path']] = res.reason
            else:
                kept.append(rec)
                digests.append(res[0])
                sizes.append((res[1], res[2]))
        return kept, sizes, digests

    def num_records(self) -> int:
        return len(self.entries)

    def bucket_counts(self) -> dict[tuple[int, int], int]:
        """Samples per bucket in one epoch (repeats and resolutions included)."""
        return dict(sorted(Counter(b for _, b in self.entries).items()))

    def neighbour(self, index: int, attempt: int) -> int:
        """A replacement for an unreadable sample: the next one of the same bucket."""
        members = self.members[self.groups[index]]
        return members[(members.index(index) + attempt) % len(members)] if attempt else index

    def _fields(self, index: int) -> dict:
        """Sample `index` before its image is read: the record's captions, bucket, size and digest."""
        record_index, bucket = self.entries[index]
        rec = self.records[record_index]
        captions = rec['captions'] or ([self.cfg.DEFAULT_CAPTION] if self.cfg.DEFAULT_CAPTION else [])
        return {'captions': list(captions), '_bucket': bucket, '_size': self.sizes[record_index],
                '_digest': self.digests[record_index], 'meta': {'img_path': rec['img_path'], 'concept': rec['concept']}}

    def _get(self, index: int) -> dict:
        item = self._fields(index)
        rec = self.records[self.entries[index][0]]
        path = rec['img_path']
        try:
            data = sources.read_record(rec)
        except OSError as e:
            raise BadSampleError(path, f'{type(e).__name__}: {e}') from e
        item['img'] = decode_rgb(data, path, self.cfg.MAX_PIXELS)
        return item

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        item = super().__getitem__(key)
        if 'image' in item:
            item.pop('img', None)
        return item

    def __getitems__(self, keys: list) -> list[dict[str, Any]]:
        """A batch's items (the loader asks for a batch at once): when the latent cache holds every
        one of them, only their plan (caption, sizes, latent_key), no image read or decoded."""
        if self.latent_probe is not None:
            plans = []
            for key in keys:
                index, seed = key if isinstance(key, tuple) else (int(key), int(key))
                plans.append(self.planned({**self._fields(index), RNG_KEY: torch.Generator().manual_seed(seed)}))
            if self.all_cached(plans):
                return plans
        return [self[key] for key in keys]

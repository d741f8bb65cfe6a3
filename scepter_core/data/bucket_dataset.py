"""BucketImageDataset: images of any shape from a DATA_DIR (folder with sidecar captions,
metadata.jsonl, parquet, CSV/TXT list), each trained in its aspect-ratio bucket.

Construction reads every image's header once (threads; through fsspec), so that bad files are
known, counted and named once before training, and each image's bucket is fixed. Items carry
`image`, `prompt`, and SDXL's `original_size`, `crop_coords` and `target_size` ([h, w] / [top, left]).
Use it with BucketSampler (the default SAMPLER here): each batch comes from one bucket."""
from __future__ import annotations

import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from PIL import Image

from ..config import Config
from ..errors import ConfigError
from ..registry import DATASETS
from . import sources
from .base import BaseDataset
from .buckets import CROPS, Placement, assign_bucket, bucket_sizes, place
from .captions import CAPTION_KEYS, MakeCaption
from .errors import BadSampleError
from .images import DEFAULT_MAX_PIXELS, decode_rgb, image_size
from .paths import PATH_KEYS
from .transforms.base import item_randint
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


class PlaceInBucket:
    """Pipeline step: item['img'] resized and cropped into item['_bucket'] (random crops from the
    item's generator); records the SDXL size conditioning."""

    def __init__(self, crop: str, interpolation: str, fill: int):
        self.crop, self.interpolation, self.fill = crop, interpolation, fill

    def __call__(self, item: dict) -> dict:
        image = item['img']
        p = place(image.height, image.width, item.pop('_bucket'), self.crop, lambda high: item_randint(item, high))
        item['img'] = apply_placement(image, p, self.interpolation, self.fill)
        item['original_size'] = torch.tensor(p.original)
        item['crop_coords'] = torch.tensor(p.crop)
        item['target_size'] = torch.tensor(p.target)
        return item


@DATASETS.register_class(aliases=('ImageFolderDataset',))
class BucketImageDataset(BaseDataset):
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

    def __init__(self, cfg: Config | dict | None = None, logger: logging.Logger | None = None):
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
        self.records, sizes = self._scan(records)
        self.entries: list[tuple[int, tuple[int, int]]] = []  # (record, bucket) per sample of an epoch
        for table in self.tables:
            for i, (rec, (h, w)) in enumerate(zip(self.records, sizes)):
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
        self.pipeline.transforms[:0] = [PlaceInBucket(c.CROP, c.INTERPOLATION, c.FILL),
                                        MakeCaption({k: c[k] for k in CAPTION_KEYS})]

    def _scan(self, records: list[dict]) -> tuple[list[dict], list[tuple[int, int]]]:
        def probe(rec: dict) -> tuple[int, int] | BadSampleError:
            try:
                return image_size(sources.read_record(rec), rec['img_path'], self.cfg.MAX_PIXELS)
            except BadSampleError as e:
                return e
            except OSError as e:
                return BadSampleError(rec['img_path'], f'{type(e).__name__}: {e}')
        with ThreadPoolExecutor(max(1, self.cfg.SCAN_THREADS)) as pool:
            results = list(pool.map(probe, records))
        kept, sizes = [], []
        for rec, res in zip(records, results):
            if isinstance(res, BadSampleError):
                self.bad[rec['img_path']] = res.reason
            else:
                kept.append(rec)
                sizes.append(res)
        return kept, sizes

    def num_records(self) -> int:
        return len(self.entries)

    def bucket_counts(self) -> dict[tuple[int, int], int]:
        """Samples per bucket in one epoch (repeats and resolutions included)."""
        return dict(sorted(Counter(b for _, b in self.entries).items()))

    def neighbour(self, index: int, attempt: int) -> int:
        """A replacement for an unreadable sample: the next one of the same bucket."""
        members = self.members[self.groups[index]]
        return members[(members.index(index) + attempt) % len(members)] if attempt else index

    def _get(self, index: int) -> dict:
        record_index, bucket = self.entries[index]
        rec = self.records[record_index]
        path = rec['img_path']
        try:
            data = sources.read_record(rec)
        except OSError as e:
            raise BadSampleError(path, f'{type(e).__name__}: {e}') from e
        captions = rec['captions'] or ([self.cfg.DEFAULT_CAPTION] if self.cfg.DEFAULT_CAPTION else [])
        return {'img': decode_rgb(data, path, self.cfg.MAX_PIXELS), 'captions': captions, '_bucket': bucket,
                'meta': {'img_path': path, 'concept': rec['concept']}}

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        item = super().__getitem__(key)
        if 'image' in item:
            item.pop('img', None)
        return item

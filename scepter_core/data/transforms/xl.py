"""SDXL's data transforms: FlexibleResize (cover a target size) and FlexibleCropXL (crop it and
record SDXL's micro-conditioning: original size, crop top-left, target size)."""
from __future__ import annotations

import logging
from typing import Any

import torch

from ...config import Config
from ...errors import ConfigError, ScepterError
from ...registry import TRANSFORMS
from . import functional as Fn
from .base import KeyedTransform, item_randint

_SIZE = {'value': None, 'type': (int, list),
         'description': "Target [height, width] (or an int); null: the item's meta 'image_size'."}


def _target_size(transform: KeyedTransform, item: dict) -> tuple[int, int]:
    """The item's meta 'image_size' (a bucketing dataset's choice), else SIZE; recorded in meta."""
    meta = item.setdefault('meta', {})
    size = meta.get('image_size', transform.size)
    if size is None:
        raise ScepterError(f"{type(transform).__name__}: the item has no meta 'image_size' and "
                           f"'{transform.key_path('SIZE')}' is null; set one")
    hw = Fn.pair(size if isinstance(size, int) else [int(v) for v in size])
    meta['image_size'] = list(hw)
    return hw


def _size_param(transform: KeyedTransform) -> tuple[int, int] | None:
    value = transform.cfg.SIZE
    if value is None:
        return None
    if isinstance(value, int) and value > 0 or \
            isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) and v > 0 for v in value):
        return Fn.pair(value)
    raise ConfigError(f"'{transform.key_path('SIZE')}': expected a positive int or [height, width], got {value!r}")


def original_size_key(key: str) -> str:
    """Meta entry where FlexibleResize leaves an image's size from before the resize."""
    return f'{key}_original_size'


@TRANSFORMS.register_class()
class FlexibleResize(KeyedTransform):
    """Scale (aspect kept) so the image covers the target size (meta 'image_size' or SIZE),
    noting the size it had before in meta for FlexibleCropXL."""

    para_dict = {
        'SIZE': _SIZE,
        'INTERPOLATION': {'value': 'bilinear', 'choices': tuple(Fn.PIL_INTERPOLATION), 'description': 'Resampling filter.'},
    }

    def __init__(self, cfg: Config | dict | None = None, logger: logging.Logger | None = None):
        super().__init__(cfg, logger)
        self.size = _size_param(self)

    def __call__(self, item: dict) -> dict:
        _target_size(self, item)
        for src, dst in zip(self.input_keys, self.output_keys):
            if src in item:
                item['meta'][original_size_key(dst)] = list(Fn.image_hw(item[src]))
        return super().__call__(item)

    def apply(self, value: Any, item: dict) -> Any:
        (oh, ow), (ih, iw) = item['meta']['image_size'], Fn.image_hw(value)
        scale = max(ow / iw, oh / ih)
        # max(): rounding must never leave the image a pixel short of the target.
        return Fn.resize(value, (max(oh, round(scale * ih)), max(ow, round(scale * iw))), self.cfg.INTERPOLATION)


@TRANSFORMS.register_class()
class FlexibleCenterCrop(KeyedTransform):
    """Crop the centre of the target size (meta 'image_size' or SIZE), as Scepter's FLUX / SD3
    recipes do after FlexibleResize."""

    para_dict = {'SIZE': _SIZE}

    def __init__(self, cfg: Config | dict | None = None, logger: logging.Logger | None = None):
        super().__init__(cfg, logger)
        self.size = _size_param(self)

    def __call__(self, item: dict) -> dict:
        _target_size(self, item)
        return super().__call__(item)

    def apply(self, value: Any, item: dict) -> Any:
        (th, tw), (h, w) = item['meta']['image_size'], Fn.image_hw(value)
        if h < th or w < tw:
            raise ScepterError(f'FlexibleCenterCrop: image {h}x{w} is smaller than the target {th}x{tw} '
                               f'(put FlexibleResize before it)')
        return Fn.crop(value, (h - th) // 2, (w - tw) // 2, th, tw)


@TRANSFORMS.register_class()
class FlexibleCropXL(KeyedTransform):
    """Crop the target size (meta 'image_size' or SIZE) at a random offset (IS_CENTER: the
    centre) and store, as [h, w] / [top, left] tensors beside each output key OUT:
    `OUT_original_size_as_tuple` (the size before FlexibleResize, else before this crop),
    `OUT_crop_coords_top_left` and `OUT_target_size_as_tuple` (SDXL's add_time_ids)."""

    para_dict = {
        'SIZE': _SIZE,
        'IS_CENTER': {'value': False, 'description': 'Crop the centre instead of a random window.'},
    }

    def __init__(self, cfg: Config | dict | None = None, logger: logging.Logger | None = None):
        super().__init__(cfg, logger)
        self.size = _size_param(self)

    def __call__(self, item: dict) -> dict:
        th, tw = _target_size(self, item)
        for src, dst in zip(self.input_keys, self.output_keys):
            if src not in item:
                raise ScepterError(f"FlexibleCropXL: the item has no key '{src}'")
            h, w = Fn.image_hw(item[src])
            if h < th or w < tw:
                raise ScepterError(f'FlexibleCropXL: image {h}x{w} is smaller than the target {th}x{tw} '
                                   f'(put FlexibleResize before it)')
            top, left = ((h - th) // 2, (w - tw) // 2) if self.cfg.IS_CENTER else \
                (item_randint(item, h - th), item_randint(item, w - tw))
            original = item['meta'].get(original_size_key(src), [h, w])
            item[dst] = Fn.crop(item[src], top, left, th, tw)
            item[f'{dst}_original_size_as_tuple'] = torch.tensor([int(v) for v in original])
            item[f'{dst}_crop_coords_top_left'] = torch.tensor([top, left])
            item[f'{dst}_target_size_as_tuple'] = torch.tensor([th, tw])
        return item

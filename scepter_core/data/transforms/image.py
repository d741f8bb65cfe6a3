"""Image transforms with Scepter's names and keys, on PIL images or CHW tensors."""
from __future__ import annotations

import logging
from typing import Any

import torch

from ...config import Config
from ...errors import ConfigError, ScepterError
from ...registry import TRANSFORMS
from . import functional as Fn
from .base import KeyedTransform, item_randint, item_uniform

_SIZE = {'type': (int, list), 'description': 'Output size: an int, or [height, width].'}


def _check_size(transform: KeyedTransform, key: str = 'SIZE') -> tuple[int, int] | int:
    value = transform.cfg[key]
    if isinstance(value, int) and value > 0:
        return value
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) and v > 0 for v in value):
        return Fn.pair(value)
    raise ConfigError(f"'{transform.key_path(key)}': expected a positive int or [height, width], got {value!r}")


@TRANSFORMS.register_class()
class Resize(KeyedTransform):
    """An int SIZE scales the shorter side to SIZE (aspect kept); [h, w] resizes exactly."""

    deterministic = True

    para_dict = {
        'SIZE': {'value': 512, **_SIZE},
        'INTERPOLATION': {'value': 'bilinear', 'choices': tuple(Fn.PIL_INTERPOLATION),
                          'description': 'Resampling filter.'},
    }

    def __init__(self, cfg: Config | dict | None = None, logger: logging.Logger | None = None):
        super().__init__(cfg, logger)
        self.size = _check_size(self)
        self.interpolation = self.cfg.INTERPOLATION

    def apply(self, value: Any, item: dict) -> Any:
        if not hasattr(value, 'convert') and self.interpolation not in Fn.TENSOR_INTERPOLATION:
            raise ScepterError(f"Resize: INTERPOLATION '{self.interpolation}' works on PIL images only; "
                               f"use one of {', '.join(Fn.TENSOR_INTERPOLATION)} for tensors")
        if isinstance(self.size, int):
            return Fn.resize_shorter(value, self.size, self.interpolation)
        return Fn.resize(value, self.size, self.interpolation)


@TRANSFORMS.register_class()
class CenterCrop(KeyedTransform):
    """Crop the centre (zero padding when the image is smaller than SIZE)."""

    deterministic = True

    para_dict = {'SIZE': {'value': 512, **_SIZE}}

    def __init__(self, cfg: Config | dict | None = None, logger: logging.Logger | None = None):
        super().__init__(cfg, logger)
        self.size = Fn.pair(_check_size(self))

    def apply(self, value: Any, item: dict) -> Any:
        return Fn.center_crop(value, self.size)


@TRANSFORMS.register_class()
class RandomCrop(KeyedTransform):
    """Crop a random SIZE window; the offset comes from the item's own generator."""

    para_dict = {
        'SIZE': {'value': 512, **_SIZE},
        'PADDING': {'value': None, 'type': (int, list),
                    'description': 'Border added first: an int for all sides, [left/right, top/bottom] '
                                   'or [left, top, right, bottom].'},
        'PAD_IF_NEEDED': {'value': False, 'description': 'Pad images smaller than SIZE instead of failing.'},
        'FILL': {'value': 0, 'type': (int, float), 'description': 'Pixel value of the padding.'},
    }

    def __init__(self, cfg: Config | dict | None = None, logger: logging.Logger | None = None):
        super().__init__(cfg, logger)
        self.size = Fn.pair(_check_size(self))
        p = self.cfg.PADDING
        p = [] if p is None else [p] * 4 if isinstance(p, int) else list(p)
        if len(p) == 2:
            p = [p[0], p[1], p[0], p[1]]
        if len(p) not in (0, 4):
            raise ConfigError(f"'{self.key_path('PADDING')}': expected an int, 2 or 4 values, got {p!r}")
        self.padding = p

    def apply(self, value: Any, item: dict) -> Any:
        if self.padding:
            value = Fn.pad(value, *self.padding, fill=self.cfg.FILL)
        h, w = Fn.image_hw(value)
        if h < self.size[0] or w < self.size[1]:
            if not self.cfg.PAD_IF_NEEDED:
                raise ScepterError(f'RandomCrop: image {h}x{w} is smaller than SIZE {self.size[0]}x{self.size[1]} '
                                   f'(set PAD_IF_NEEDED: true or resize first)')
            value = Fn.pad_to_at_least(value, self.size, self.cfg.FILL)
            h, w = Fn.image_hw(value)
        top = item_randint(item, h - self.size[0])
        left = item_randint(item, w - self.size[1])
        return Fn.crop(value, top, left, *self.size)


@TRANSFORMS.register_class()
class RandomHorizontalFlip(KeyedTransform):
    """Mirror left-right with probability P (decided by the item's own generator)."""

    para_dict = {'P': {'value': 0.5, 'type': (int, float), 'description': 'Probability of flipping.'}}

    def apply(self, value: Any, item: dict) -> Any:
        return Fn.hflip(value) if item_uniform(item) < self.cfg.P else value


@TRANSFORMS.register_class()
class ImageToTensor(KeyedTransform):
    """PIL image / HWC uint8 array / uint8 tensor -> float CHW tensor in [0, 1]."""

    deterministic = True

    def apply(self, value: Any, item: dict) -> torch.Tensor:
        return Fn.to_float_tensor(value)


@TRANSFORMS.register_class()
class Normalize(KeyedTransform):
    """(x - MEAN) / STD per channel on a float CHW tensor."""

    deterministic = True

    para_dict = {
        'MEAN': {'value': [0.5, 0.5, 0.5], 'type': list, 'description': 'Per-channel mean.'},
        'STD': {'value': [0.5, 0.5, 0.5], 'type': list, 'description': 'Per-channel standard deviation.'},
    }

    def __init__(self, cfg: Config | dict | None = None, logger: logging.Logger | None = None):
        super().__init__(cfg, logger)
        if len(self.cfg.MEAN) != len(self.cfg.STD) or any(s == 0 for s in self.cfg.STD):
            raise ConfigError(f"'{self.key_path('STD')}': MEAN {self.cfg.MEAN} and STD {self.cfg.STD} need the "
                              f'same length and non-zero STD')
        self.mean = torch.tensor(self.cfg.MEAN, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(self.cfg.STD, dtype=torch.float32).view(-1, 1, 1)

    def apply(self, value: Any, item: dict) -> torch.Tensor:
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            raise ScepterError(f'Normalize needs a float tensor, got {type(value).__name__}: '
                               f'put ImageToTensor before it')
        if value.shape[-3] != self.mean.shape[0]:
            raise ScepterError(f'Normalize: MEAN has {self.mean.shape[0]} values but the image has '
                               f'{value.shape[-3]} channels')
        return (value - self.mean) / self.std

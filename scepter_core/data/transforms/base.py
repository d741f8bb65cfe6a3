"""Transform bases. A transform maps one item dict to an item dict (`item = t(item)`),
Scepter's convention, so Scepter users' pipelines read the same here."""
from __future__ import annotations

import logging
from typing import Any

import torch

from ...base import BaseObject
from ...config import Config
from ...errors import ConfigError, ScepterError

BACKENDS = ('pillow', 'torchvision', 'cv2')
# The dataset stores a per-item torch.Generator under this key so random transforms
# draw the same numbers for the same sample in every run (exact resume).
RNG_KEY = '_rng'


def as_key_list(value: str | list | tuple) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def item_generator(item: dict) -> torch.Generator:
    """The item's generator; without one (a transform used on its own), a fresh
    generator seeded from torch's global RNG so `torch.manual_seed` still governs it."""
    g = item.get(RNG_KEY)
    if g is None:
        g = torch.Generator().manual_seed(int(torch.randint(0, 2 ** 62, (1,))))
        item[RNG_KEY] = g
    return g


def item_uniform(item: dict) -> float:
    return float(torch.rand(1, generator=item_generator(item)))


def item_randint(item: dict, high: int) -> int:
    """A uniform integer in [0, high]."""
    return int(torch.randint(0, high + 1, (1,), generator=item_generator(item)))


class Transform(BaseObject):
    """Base of every registered transform."""

    # True: the output follows from the input alone (no draws from the item's generator, no key
    # dropped), so a cache may key the result on the input and these settings (bucket datasets).
    deterministic = False

    def __call__(self, item: dict) -> dict:
        raise NotImplementedError(f'{type(self).__name__} does not implement __call__')

    def key_path(self, key: str) -> str:
        return f'{self.cfg.path}.{key}' if self.cfg.path else f'{type(self).__name__}.{key}'

    def __repr__(self) -> str:
        return f'{type(self).__name__}()'


class BackendTransform(Transform):
    """Transforms that take Scepter's BACKEND key. Everything runs on PIL and torch; the
    backend only chooses what LoadImageFromFile returns (PIL, CHW uint8 tensor, HWC array)."""

    para_dict = {
        'BACKEND': {'value': 'pillow', 'choices': BACKENDS,
                    'description': "Image type: 'pillow' (PIL), 'torchvision' (CHW uint8 tensor), "
                                   "'cv2' (HWC uint8 array)."},
    }


class KeyedTransform(BackendTransform):
    """Applies `apply(value, item)` to each INPUT_KEY and stores it under the matching OUTPUT_KEY."""

    para_dict = {
        'INPUT_KEY': {'value': ['img'], 'type': (str, list), 'description': 'Input key or list of keys.'},
        'OUTPUT_KEY': {'value': ['img'], 'type': (str, list),
                       'description': 'Output key or list of keys, one per INPUT_KEY.'},
    }

    def __init__(self, cfg: Config | dict | None = None, logger: logging.Logger | None = None):
        super().__init__(cfg, logger)
        self.input_keys = as_key_list(self.cfg.INPUT_KEY)
        self.output_keys = as_key_list(self.cfg.OUTPUT_KEY)
        if len(self.input_keys) != len(self.output_keys):
            raise ConfigError(f"'{self.key_path('OUTPUT_KEY')}': {self.output_keys} must have one key per "
                              f"INPUT_KEY {self.input_keys}")

    def __call__(self, item: dict) -> dict:
        for src, dst in zip(self.input_keys, self.output_keys):
            if src not in item:
                raise ScepterError(f"{type(self).__name__}: the item has no key '{src}' "
                                   f"(keys: {', '.join(k for k in item if not k.startswith('_'))})")
            item[dst] = self.apply(item[src], item)
        return item

    def apply(self, value: Any, item: dict) -> Any:
        raise NotImplementedError(f'{type(self).__name__} does not implement apply')

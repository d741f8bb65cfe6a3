"""Transforms that reshape the item dict: Compose, Select, Rename, Identity."""
from __future__ import annotations

import logging

from ...config import Config
from ...errors import ScepterError
from ...registry import TRANSFORMS
from .base import KeyedTransform, Transform


@TRANSFORMS.register_class()
class Compose(Transform):
    """Applies TRANSFORMS in order."""

    para_dict = {
        'TRANSFORMS': {'value': [], 'type': list, 'registry': 'TRANSFORMS',
                       'description': 'Transform blocks applied in order.'},
    }

    def __init__(self, cfg: Config | dict | None = None, logger: logging.Logger | None = None):
        super().__init__(cfg, logger)
        self.transforms = [TRANSFORMS.build(block, logger=self.logger) for block in self.cfg.TRANSFORMS]

    @classmethod
    def of(cls, blocks: list, logger: logging.Logger | None = None) -> 'Compose':
        """A pipeline from a list of blocks, keeping their config paths for error messages."""
        cfg = Config()
        dict.__setitem__(cfg, 'TRANSFORMS', list(blocks or []))  # keep the blocks' recipe paths
        return cls(cfg, logger=logger)

    def __call__(self, item: dict) -> dict:
        for transform in self.transforms:
            item = transform(item)
        return item

    def __len__(self) -> int:
        return len(self.transforms)

    def __repr__(self) -> str:
        return f"Compose([{', '.join(repr(t) for t in self.transforms)}])"


@TRANSFORMS.register_class()
class Identity(Transform):
    """Returns the item unchanged."""

    deterministic = True

    def __call__(self, item: dict) -> dict:
        return item


@TRANSFORMS.register_class()
class Select(Transform):
    """Keeps KEYS, and META_KEYS (from item['meta'], else the item) under 'meta'."""

    para_dict = {
        'KEYS': {'value': [], 'type': list, 'description': 'Item keys to keep.'},
        'META_KEYS': {'value': [], 'type': list, 'description': "Keys to keep under 'meta'."},
    }

    def __call__(self, item: dict) -> dict:
        meta = item.get('meta') or {}
        missing = [k for k in self.cfg.KEYS if k not in item]
        missing += [f'meta.{k}' for k in self.cfg.META_KEYS if k not in meta and k not in item]
        if missing:
            raise ScepterError(f"Select: the item has no {', '.join(missing)} (keys: "
                               f"{', '.join(k for k in item if not k.startswith('_'))}; meta: {', '.join(meta)})")
        out = {k: item[k] for k in self.cfg.KEYS}
        if self.cfg.META_KEYS:
            out['meta'] = {k: meta[k] if k in meta else item[k] for k in self.cfg.META_KEYS}
        return out


@TRANSFORMS.register_class()
class Rename(KeyedTransform):
    """Moves each INPUT_KEY to the matching OUTPUT_KEY; other keys pass through."""

    deterministic = True

    def __call__(self, item: dict) -> dict:
        renamed = {dst: item[src] for src, dst in zip(self.input_keys, self.output_keys) if src in item}
        out = {k: v for k, v in item.items() if k not in self.input_keys}
        out.update(renamed)
        return out

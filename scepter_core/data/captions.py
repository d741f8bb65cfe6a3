"""Caption tools: one of several captions per image, tag shuffling that keeps the first N
tags in place, trigger words, and caption dropout. Every random choice comes from the item's
own generator, so a sample gets the same caption in every run and after a resume."""
from __future__ import annotations

import logging

import torch

from ..config import Config
from ..errors import ConfigError
from ..registry import TRANSFORMS
from .transforms.base import Transform, item_generator

CAPTION_KEYS = {
    'CAPTION_DROPOUT': {'value': 0.0, 'type': (int, float),
                        'description': 'Probability of training a sample on the empty caption.'},
    'SHUFFLE_TAGS': {'value': False, 'description': 'Shuffle the tags of each caption (split at TAG_SEPARATOR).'},
    'KEEP_TAGS': {'value': 0, 'type': int, 'description': 'With SHUFFLE_TAGS: the first N tags stay in front, in order.'},
    'TAG_SEPARATOR': {'value': ',', 'type': str, 'description': 'Separator between tags.'},
    'TRIGGER_WORDS': {'value': '', 'type': str, 'description': 'Words put before every non-empty caption.'},
}


def shuffle_tags(caption: str, separator: str, keep: int, g: torch.Generator) -> str:
    tags = [t.strip() for t in caption.split(separator)]
    tags = [t for t in tags if t]
    head, tail = tags[:keep], tags[keep:]
    tail = [tail[i] for i in torch.randperm(len(tail), generator=g).tolist()]
    joiner = separator if separator.strip() == '' else f'{separator.strip()} '
    return joiner.join(head + tail)


def make_caption(captions: list[str], g: torch.Generator, dropout: float = 0.0, shuffle: bool = False,
                 keep: int = 0, separator: str = ',', trigger: str = '') -> str:
    """The caption a sample trains on this time, drawn with `g` (the sample's own generator)."""
    pick = int(torch.randint(0, max(len(captions), 1), (1,), generator=g))
    drop = float(torch.rand(1, generator=g)) < dropout
    caption = captions[pick] if captions else ''
    if shuffle and caption:
        caption = shuffle_tags(caption, separator, keep, g)
    if drop:
        return ''
    if trigger.strip():
        caption = f'{trigger.strip()}{separator.strip() + " " if separator.strip() else " "}{caption}' \
            if caption else trigger.strip()
    return caption


@TRANSFORMS.register_class()
class MakeCaption(Transform):
    """item['captions'] (a list, or one string) -> item['prompt'] with the caption tools."""

    para_dict = dict(CAPTION_KEYS)

    def __init__(self, cfg: Config | dict | None = None, logger: logging.Logger | None = None):
        super().__init__(cfg, logger)
        if not 0.0 <= float(self.cfg.CAPTION_DROPOUT) <= 1.0:
            raise ConfigError(f"'{self.key_path('CAPTION_DROPOUT')}': must be in [0, 1], got {self.cfg.CAPTION_DROPOUT}")
        if self.cfg.KEEP_TAGS < 0 or not self.cfg.TAG_SEPARATOR:
            raise ConfigError(f"'{self.key_path('KEEP_TAGS')}': KEEP_TAGS must be >= 0 and TAG_SEPARATOR non-empty")

    def __call__(self, item: dict) -> dict:
        captions = item.pop('captions', item.get('prompt', ''))
        captions = [captions] if isinstance(captions, str) else list(captions)
        c = self.cfg
        item['prompt'] = make_caption(captions, item_generator(item), float(c.CAPTION_DROPOUT), bool(c.SHUFFLE_TAGS),
                                      int(c.KEEP_TAGS), c.TAG_SEPARATOR, c.TRIGGER_WORDS)
        return item

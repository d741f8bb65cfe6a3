"""LoadImageFromFile: read the item's image path into `item['img']`."""
from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import torch
from PIL import Image

from ...config import Config
from ...errors import ScepterError
from ...fs import FS
from ...registry import TRANSFORMS
from ..errors import BadSampleError
from ..images import DEFAULT_MAX_PIXELS, decode_rgb
from .base import BackendTransform


def read_rgb(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open and fully decode an image (so a truncated file or a decompression bomb fails here,
    as a BadSampleError the dataset skips, not later)."""
    try:
        with FS.get_from(path) as local:
            with open(local, 'rb') as f:
                data = f.read()
    except OSError as e:  # missing, unreadable
        raise BadSampleError(path, f'{type(e).__name__}: {e}') from e
    return decode_rgb(data, path, max_pixels)


def image_path_of(item: dict, key: str) -> str:
    """`item[key]`, else `item['meta'][key]`, joined onto `meta['prefix']` when present."""
    meta = item.get('meta') or {}
    path = item.get(key, meta.get(key))
    if not path:
        raise ScepterError(f"LoadImageFromFile: the item has no '{key}' (neither item['{key}'] nor "
                           f"item['meta']['{key}'])")
    prefix = meta.get('prefix')
    return os.path.join(prefix, path) if prefix else str(path)


@TRANSFORMS.register_class()
class LoadImageFromFile(BackendTransform):
    """Reads the path under PATH_KEY and stores the image as `item['img']`."""

    para_dict = {
        'RGB_ORDER': {'value': 'RGB', 'choices': ('RGB', 'BGR'), 'description': 'Channel order of the result.'},
        'PATH_KEY': {'value': 'img_path', 'type': str,
                     'description': "Key of the image path, looked up in the item, then in item['meta']."},
    }

    def __init__(self, cfg: Config | dict | None = None, logger: logging.Logger | None = None):
        super().__init__(cfg, logger)
        self.rgb_order = self.cfg.RGB_ORDER
        self.backend = self.cfg.BACKEND

    def __call__(self, item: dict) -> dict:
        image = read_rgb(image_path_of(item, self.cfg.PATH_KEY))
        item['img'] = self._as_backend(image)
        item.setdefault('meta', {})['rgb_order'] = self.rgb_order
        return item

    def _as_backend(self, image: Image.Image) -> Any:
        if self.rgb_order == 'BGR':
            image = Image.merge('RGB', image.split()[::-1])  # still mode 'RGB', channels reversed
        if self.backend == 'pillow':
            return image
        array = np.asarray(image).copy()
        if self.backend == 'cv2':
            return array
        return torch.from_numpy(array).permute(2, 0, 1).contiguous()

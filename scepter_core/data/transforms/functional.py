"""Geometric image operations on PIL images, CHW tensors and HWC uint8 arrays (no torchvision)."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

PIL_INTERPOLATION = {
    'nearest': Image.Resampling.NEAREST, 'bilinear': Image.Resampling.BILINEAR,
    'bicubic': Image.Resampling.BICUBIC, 'lanczos': Image.Resampling.LANCZOS,
    'box': Image.Resampling.BOX, 'hamming': Image.Resampling.HAMMING,
}
TENSOR_INTERPOLATION = ('nearest', 'bilinear', 'bicubic')


def pair(size: int | list | tuple) -> tuple[int, int]:
    """An int or [h, w] as (h, w)."""
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def image_hw(img: Any) -> tuple[int, int]:
    if isinstance(img, Image.Image):
        return img.height, img.width
    if isinstance(img, np.ndarray):
        return img.shape[0], img.shape[1]
    return img.shape[-2], img.shape[-1]


def _via_tensor(fn: Callable[[torch.Tensor], torch.Tensor], arr: np.ndarray) -> np.ndarray:
    """Run a tensor op on an HWC (or HW) array and convert back."""
    t = torch.tensor(arr)  # a copy: PIL-backed arrays are read-only
    t = t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)
    out = fn(t)
    return (out[0] if arr.ndim == 2 else out.permute(1, 2, 0)).numpy()


def resize(img: Any, hw: tuple[int, int], interpolation: str = 'bilinear') -> Any:
    h, w = hw
    if isinstance(img, Image.Image):
        return img.resize((w, h), PIL_INTERPOLATION[interpolation])
    if isinstance(img, np.ndarray):
        return _via_tensor(lambda t: resize(t, hw, interpolation), img)
    x = img.unsqueeze(0) if img.ndim == 3 else img
    dtype = x.dtype
    xf = x.float()
    kwargs = {} if interpolation == 'nearest' else {'align_corners': False, 'antialias': True}
    out = F.interpolate(xf, size=(h, w), mode=interpolation, **kwargs)
    if not dtype.is_floating_point:  # uint8 images stay uint8
        out = out.round().clamp(0, 255)
    out = out.to(dtype)
    return out[0] if img.ndim == 3 else out


def resize_shorter(img: Any, size: int, interpolation: str = 'bilinear') -> Any:
    """Scale so the shorter side equals `size`, keeping the aspect ratio."""
    h, w = image_hw(img)
    if h <= w:
        return resize(img, (size, int(size * w / h)), interpolation)
    return resize(img, (int(size * h / w), size), interpolation)


def pad(img: Any, left: int, top: int, right: int, bottom: int, fill: int | float = 0) -> Any:
    if left == top == right == bottom == 0:
        return img
    if isinstance(img, Image.Image):
        color = fill if img.mode in ('L', 'I', 'F') else (fill,) * len(img.getbands())
        out = Image.new(img.mode, (img.width + left + right, img.height + top + bottom), color)
        out.paste(img, (left, top))
        return out
    if isinstance(img, np.ndarray):
        return _via_tensor(lambda t: pad(t, left, top, right, bottom, fill), img)
    return F.pad(img, (left, right, top, bottom), value=fill)


def crop(img: Any, top: int, left: int, h: int, w: int) -> Any:
    if isinstance(img, Image.Image):
        return img.crop((left, top, left + w, top + h))
    if isinstance(img, np.ndarray):
        return img[top:top + h, left:left + w].copy()
    return img[..., top:top + h, left:left + w]


def pad_to_at_least(img: Any, hw: tuple[int, int], fill: int | float = 0) -> Any:
    """Pad evenly on each side so the image is at least `hw`."""
    h, w = image_hw(img)
    dh, dw = max(hw[0] - h, 0), max(hw[1] - w, 0)
    return pad(img, dw // 2, dh // 2, dw - dw // 2, dh - dh // 2, fill)


def center_crop(img: Any, hw: tuple[int, int]) -> Any:
    img = pad_to_at_least(img, hw)
    h, w = image_hw(img)
    top, left = int(round((h - hw[0]) / 2.0)), int(round((w - hw[1]) / 2.0))
    return crop(img, top, left, hw[0], hw[1])


def hflip(img: Any) -> Any:
    if isinstance(img, Image.Image):
        return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if isinstance(img, np.ndarray):
        return img[:, ::-1].copy()
    return img.flip(-1)


def to_float_tensor(img: Any) -> torch.Tensor:
    """PIL / HWC uint8 array / CHW uint8 tensor -> float CHW tensor in [0, 1]."""
    if isinstance(img, Image.Image):
        img = np.asarray(img)
    if isinstance(img, np.ndarray):
        arr = img[:, :, None] if img.ndim == 2 else img
        t = torch.tensor(arr).permute(2, 0, 1)  # a copy: PIL-backed arrays are read-only
    else:
        t = img
    if t.dtype == torch.uint8:
        return t.float().div_(255.0)
    return t.float()

"""Reading images from bytes with every failure a BadSampleError: zero bytes, not an image,
truncated data, and decompression bombs (more pixels than MAX_PIXELS, checked from the header
before any pixel is decoded); every mode (palette, alpha, CMYK, 16-bit) ends as 8-bit RGB."""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image

from .errors import BadSampleError

DEFAULT_MAX_PIXELS = 8192 * 8192
# Integer modes wider than 8 bits (16-bit PNG/TIFF greyscale): PIL's convert('RGB') clips
# them at 255, which turns a 16-bit image almost white; they are scaled instead.
_WIDE_INT_MODES = ('I', 'I;16', 'I;16B', 'I;16L', 'I;16N')


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with transparent pixels composited onto white (not black) and 16-bit values scaled."""
    if image.mode == 'RGB':
        return image
    if image.mode in _WIDE_INT_MODES:
        grey = np.asarray(image, dtype=np.float64) / 257.0  # 65535 -> 255
        return Image.fromarray(grey.round().clip(0, 255).astype(np.uint8), 'L').convert('RGB')
    if image.mode == 'P':
        image = image.convert('RGBA')
    if image.mode in ('RGBA', 'LA', 'PA', 'RGBa', 'La'):
        background = Image.new('RGB', image.size, (255, 255, 255))
        rgba = image.convert('RGBA')
        background.paste(rgba, mask=rgba.getchannel('A'))
        return background
    return image.convert('RGB')


def _open(data: bytes, name: str, max_pixels: int) -> Image.Image:
    if not data:
        raise BadSampleError(name, 'zero bytes')
    try:
        with warnings.catch_warnings():  # our own limit decides, not PIL's global one
            warnings.simplefilter('ignore', Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise BadSampleError(name, f'decompression bomb ({e})') from e
    except Image.UnidentifiedImageError as e:
        raise BadSampleError(name, 'not an image (unknown format)') from e
    except (OSError, SyntaxError, ValueError) as e:
        raise BadSampleError(name, f'not an image ({type(e).__name__}: {e})') from e
    if image.width * image.height > max_pixels:
        raise BadSampleError(name, f'decompression bomb: {image.width}x{image.height} is more than '
                                   f'{max_pixels} pixels (MAX_PIXELS)')
    return image


def image_size(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(height, width) from the header alone."""
    image = _open(data, name, max_pixels)
    return image.height, image.width


def decode_rgb(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """The fully decoded RGB image (a truncated file fails here)."""
    image = _open(data, name, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', Image.DecompressionBombWarning)
            image.load()
        return to_rgb(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise BadSampleError(name, f'truncated or corrupt ({type(e).__name__}: {e})') from e

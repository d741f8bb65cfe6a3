"""Reading images from bytes with every failure a BadSampleError: zero bytes, not an image,
truncated data, and decompression bombs (more pixels than MAX_PIXELS, checked from the header
before any pixel is decoded)."""
from __future__ import annotations

import io
import warnings

from PIL import Image

from .errors import BadSampleError
from .transforms.io import to_rgb

DEFAULT_MAX_PIXELS = 8192 * 8192


def _open(data: bytes, name: str, max_pixels: int) -> Image.Image:
    if not data:
        raise BadSampleError(name, 'zero bytes')
    try:
        with warnings.catch_warnings():  # our own limit decides, not PIL's global one
            warnings.simplefilter('ignore', Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise BadSampleError(name, f'decompression bomb (more than twice PIL\'s MAX_IMAGE_PIXELS)') from e
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

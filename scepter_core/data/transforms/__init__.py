"""Registered transforms (TRANSFORMS); importing this package registers them."""
from .base import (BACKENDS, RNG_KEY, BackendTransform, KeyedTransform, Transform, item_generator,
                   item_randint, item_uniform)
from .image import CenterCrop, ImageToTensor, Normalize, RandomCrop, RandomHorizontalFlip, Resize
from .io import LoadImageFromFile, read_rgb
from .structure import Compose, Identity, Rename, Select
from .xl import FlexibleCropXL, FlexibleResize

__all__ = ['BACKENDS', 'RNG_KEY', 'Transform', 'BackendTransform', 'KeyedTransform', 'item_generator',
           'item_randint', 'item_uniform', 'Resize', 'CenterCrop', 'RandomCrop', 'RandomHorizontalFlip',
           'ImageToTensor', 'Normalize', 'LoadImageFromFile', 'read_rgb', 'Compose', 'Identity', 'Select',
           'Rename', 'FlexibleResize', 'FlexibleCropXL']

"""Backbones: the LDM / Stable Diffusion UNet. Importing this package registers them."""
from . import unet  # noqa: F401

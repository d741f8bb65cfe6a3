"""Backbones: the LDM / Stable Diffusion UNet and the FLUX transformer. Importing this package registers them."""
from . import flux, unet  # noqa: F401

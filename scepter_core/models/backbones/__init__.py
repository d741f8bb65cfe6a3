"""Backbones: the LDM / Stable Diffusion UNet FLUX and SD3 transformers. Importing this package registers them."""
from . import flux, mmdit, unet  # noqa: F401

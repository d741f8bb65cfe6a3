"""Networks: complete trainable models (LatentDiffusion)."""
from . import latent_diffusion  # noqa: F401

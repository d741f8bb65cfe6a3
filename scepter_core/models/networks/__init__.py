"""Networks: complete trainable models (LatentDiffusion)."""
from . import latent_diffusion, latent_diffusion_flow  # noqa: F401

"""Networks: complete trainable models (LatentDiffusion)."""
from . import latent_diffusion, latent_diffusion_flow, latent_diffusion_xl  # noqa: F401

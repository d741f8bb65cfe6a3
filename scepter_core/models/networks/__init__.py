"""Networks: complete trainable models (LatentDiffusion)."""
from . import latent_diffusion, latent_diffusion_flow, latent_diffusion_xl  # noqa: F401
from . import sdxl_interim  # noqa: F401  (interim SDXL conditioning: issue 18 part B replaces it)

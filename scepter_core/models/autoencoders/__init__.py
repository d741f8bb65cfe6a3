"""Autoencoders: the KL VAE of Stable Diffusion. Importing this package registers them."""
from . import autoencoder_kl, coders  # noqa: F401

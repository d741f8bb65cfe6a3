"""Solvers: the training/testing lifecycle."""
from . import latent_diffusion  # noqa: F401

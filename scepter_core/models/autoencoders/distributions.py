"""The diagonal Gaussian posterior q(z|x) of the KL autoencoder."""
from __future__ import annotations

import math

import torch


class DiagonalGaussian:
    """N(mean, exp(logvar)) per latent element, from moments [B, 2C, h, w] = [mean | logvar]."""

    def __init__(self, moments: torch.Tensor, deterministic: bool = False):
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)  # keeps exp() finite, as in LDM
        self.deterministic = deterministic
        self.std = torch.zeros_like(self.mean) if deterministic else torch.exp(0.5 * self.logvar)
        self.var = self.std * self.std if deterministic else torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * noise

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) summed over latent elements, one value per sample."""
        if self.deterministic:
            return self.mean.new_zeros(self.mean.shape[0])
        return 0.5 * (self.mean.pow(2) + self.var - 1.0 - self.logvar).flatten(1).sum(1)

    def nll(self, sample: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood of `sample`, summed over latent elements, per sample."""
        if self.deterministic:
            return self.mean.new_zeros(self.mean.shape[0])
        terms = math.log(2.0 * math.pi) + self.logvar + (sample - self.mean).pow(2) / self.var
        return 0.5 * terms.flatten(1).sum(1)

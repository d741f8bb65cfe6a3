"""Noise schedules (NOISE_SCHEDULES): each gives the cumulative signal fraction
`alphas_cumprod[t]` (written a_t below) of the variance-preserving process
`x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps` for t = 0 .. n-1.

Everything is computed in float64 and cast where it is used. The number of steps
comes from the diffusion that owns the schedule (GaussianDiffusion's TIMESTEPS)."""
from __future__ import annotations

import math

import torch

from ..base import BaseObject
from ..errors import ConfigError
from ..registry import NOISE_SCHEDULES


class NoiseSchedule(BaseObject):
    """Base: subclasses define `betas(n)` or override `alphas_cumprod(n)`."""

    def betas(self, n: int) -> torch.Tensor:
        """Per-step noise variances beta_t, float64 [n]."""
        return alphas_cumprod_to_betas(self.alphas_cumprod(n))

    def alphas_cumprod(self, n: int) -> torch.Tensor:
        """a_t = prod_{s<=t} (1 - beta_s), float64 [n]."""
        return torch.cumprod(1.0 - self.betas(n), dim=0)


def _check_beta_range(cfg) -> None:
    if not 0.0 < cfg.BETA_MIN <= cfg.BETA_MAX < 1.0:
        raise ConfigError(f"'{cfg.path or 'SCHEDULE'}': need 0 < BETA_MIN <= BETA_MAX < 1, "
                          f'got BETA_MIN={cfg.BETA_MIN}, BETA_MAX={cfg.BETA_MAX}')


@NOISE_SCHEDULES.register_class('linear')
class LinearSchedule(NoiseSchedule):
    """betas evenly spaced from BETA_MIN to BETA_MAX (DDPM, Ho et al. 2020)."""

    para_dict = {
        'BETA_MIN': {'value': 0.0001, 'description': 'beta at the first timestep.'},
        'BETA_MAX': {'value': 0.02, 'description': 'beta at the last timestep.'},
    }

    def __init__(self, cfg=None, logger=None):
        super().__init__(cfg, logger)
        _check_beta_range(self.cfg)

    def betas(self, n: int) -> torch.Tensor:
        return torch.linspace(self.cfg.BETA_MIN, self.cfg.BETA_MAX, n, dtype=torch.float64)


@NOISE_SCHEDULES.register_class('scaled_linear')
class ScaledLinearSchedule(LinearSchedule):
    """sqrt(beta) evenly spaced (latent diffusion; SD1.5 uses 0.00085 .. 0.012)."""

    para_dict = {
        'BETA_MIN': {'value': 0.00085, 'description': 'beta at the first timestep.'},
        'BETA_MAX': {'value': 0.012, 'description': 'beta at the last timestep.'},
    }

    def betas(self, n: int) -> torch.Tensor:
        return torch.linspace(self.cfg.BETA_MIN ** 0.5, self.cfg.BETA_MAX ** 0.5, n, dtype=torch.float64) ** 2


@NOISE_SCHEDULES.register_class('cosine', aliases=('squaredcos_cap_v2',))
class CosineSchedule(NoiseSchedule):
    """a(t) = cos^2((t/n + s) / (1 + s) * pi/2) with betas capped (Nichol & Dhariwal 2021)."""

    para_dict = {
        'COSINE_S': {'value': 0.008, 'description': 'Small offset s that keeps beta_0 away from zero.'},
        'MAX_BETA': {'value': 0.999, 'description': 'Upper cap on each beta (avoids a singular last step).'},
    }

    def betas(self, n: int) -> torch.Tensor:
        s = self.cfg.COSINE_S
        ramp = torch.arange(n + 1, dtype=torch.float64) / n
        abar = torch.cos((ramp + s) / (1 + s) * math.pi / 2) ** 2
        return (1.0 - abar[1:] / abar[:-1]).clamp(max=self.cfg.MAX_BETA)


@NOISE_SCHEDULES.register_class('logsnr_cosine_interp')
class LogSNRCosineInterpSchedule(NoiseSchedule):
    """Scepter's schedule: the cosine log-SNR curve shifted by -2 log(SCALE), with the
    shift moving linearly from SCALE_MIN (t = 0) to SCALE_MAX (t = n-1)."""

    para_dict = {
        'LOGSNR_MIN': {'value': -15.0, 'description': 'log-SNR of the unshifted curve at the last step.'},
        'LOGSNR_MAX': {'value': 15.0, 'description': 'log-SNR of the unshifted curve at the first step.'},
        'SCALE_MIN': {'value': 2.0, 'description': 'Resolution shift used at the first step.'},
        'SCALE_MAX': {'value': 4.0, 'description': 'Resolution shift used at the last step.'},
    }

    def logsnr(self, n: int) -> torch.Tensor:
        c = self.cfg
        u_lo, u_hi = math.atan(math.exp(-0.5 * c.LOGSNR_MAX)), math.atan(math.exp(-0.5 * c.LOGSNR_MIN))
        frac = torch.linspace(0, 1, n, dtype=torch.float64)  # 0 at t = 0 (clean end)
        base = -2.0 * torch.log(torch.tan(u_lo + frac * (u_hi - u_lo)))
        shift = (1 - frac) * math.log(1 / c.SCALE_MIN) + frac * math.log(1 / c.SCALE_MAX)
        return base + 2.0 * shift

    def alphas_cumprod(self, n: int) -> torch.Tensor:
        return torch.sigmoid(self.logsnr(n))


def alphas_cumprod_to_betas(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """beta_t = 1 - a_t / a_{t-1} (with a_{-1} = 1)."""
    prev = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
    return 1.0 - alphas_cumprod / prev


def rescale_zero_terminal_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Shift and scale sqrt(a_t) so the last step has zero SNR while the first keeps
    its value (Lin et al. 2023, arXiv:2305.08891, Algorithm 1)."""
    root = alphas_cumprod.double().sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * first / (first - last)
    return root ** 2

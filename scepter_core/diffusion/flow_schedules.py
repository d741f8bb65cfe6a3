"""Noise levels of rectified-flow models, `x_t = (1 - s) x0 + s eps` with s in [0, 1].

Two kinds of NOISE_SCHEDULES blocks, named as in Scepter's FLUX/SD3 recipes:
- training: `FlowMatchSigmaScheduler` draws each sample's s (uniform, logit-normal or
  "mode" density, then a fixed shift), as diffusers' SD3/FLUX training scripts do;
- sampling: `FlowMatchShiftScheduler` (SD3: a fixed shift) and `FlowMatchFluxShiftScheduler`
  (FLUX: a shift that grows with the number of image tokens) give the descending grid.

The shift of SD3 (Esser et al. 2024, eq. 23) maps s to shift * s / (1 + (shift - 1) s);
FLUX's maps s to e^mu / (e^mu + 1/s - 1), with mu linear in the image token count."""
from __future__ import annotations

import math

import numpy as np
import torch

from ..base import BaseObject
from ..errors import ConfigError
from ..registry import NOISE_SCHEDULES

DENSITIES = ('uniform', 'logit_normal', 'mode')


def shift_sigmas(s: torch.Tensor | np.ndarray, shift: float) -> torch.Tensor | np.ndarray:
    """SD3's fixed shift: more time at high noise for shift > 1."""
    return shift * s / (1 + (shift - 1) * s)


def exponential_shift(s: np.ndarray, mu: float) -> np.ndarray:
    """FLUX's resolution-dependent shift e^mu / (e^mu + (1 / s - 1))."""
    with np.errstate(divide='ignore'):
        return math.exp(mu) / (math.exp(mu) + (1 / s - 1))


def flux_mu(image_tokens: int, base_tokens: int = 256, max_tokens: int = 4096, base_shift: float = 0.5,
            max_shift: float = 1.15) -> float:
    """mu on the line through (base_tokens, base_shift) and (max_tokens, max_shift)."""
    slope = (max_shift - base_shift) / (max_tokens - base_tokens)
    return image_tokens * slope + base_shift - slope * base_tokens


def _positive(cfg, *keys: str) -> None:
    for key in keys:
        if not cfg[key] > 0:
            raise ConfigError(f"'{cfg.path or 'NOISE_SCHEDULER'}.{key}': expected a positive number, got {cfg[key]}")


@NOISE_SCHEDULES.register_class()
class FlowMatchSigmaScheduler(BaseObject):
    """Training noise levels: u from the density, s = shift(u) on the T-step table.

    With DISCRETE (diffusers' training scripts) u picks one of the T levels
    shift(k / T), k = 1..T, as index (u * T) of the descending table; otherwise s = shift(u)."""

    para_dict = {
        'WEIGHTING_SCHEME': {'value': 'uniform', 'choices': DENSITIES + ('none', 'sigma_sqrt', 'cosmap'),
                             'description': 'Density of the timesteps: uniform, logit_normal or mode '
                                            '(none / sigma_sqrt / cosmap are loss weightings: they sample uniformly).'},
        'SHIFT': {'value': 1.0, 'description': 'Fixed shift applied to the drawn levels (SD3 and FLUX train with 3.0).'},
        'LOGIT_MEAN': {'value': 0.0, 'description': 'logit_normal: mean of the normal.'},
        'LOGIT_STD': {'value': 1.0, 'description': 'logit_normal: std of the normal.'},
        'MODE_SCALE': {'value': 1.29, 'description': 'mode: scale of the cosine term (Esser et al. 2024).'},
        'DISCRETE': {'value': True, 'description': 'Quantise to the T training levels as the reference scripts do.'},
    }

    def __init__(self, cfg=None, logger=None):
        super().__init__(cfg, logger)
        _positive(self.cfg, 'SHIFT', 'LOGIT_STD')

    def table(self, num_timesteps: int) -> torch.Tensor:
        """The T training levels, descending (float32, as diffusers keeps them)."""
        s = torch.from_numpy(np.linspace(1, num_timesteps, num_timesteps, dtype=np.float32)[::-1].copy())
        return shift_sigmas(s / num_timesteps, float(self.cfg.SHIFT))

    def density(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """u in [0, 1], float32 [batch], on the CPU."""
        scheme = self.cfg.WEIGHTING_SCHEME
        if scheme == 'logit_normal':
            u = torch.normal(float(self.cfg.LOGIT_MEAN), float(self.cfg.LOGIT_STD), size=(batch,), generator=generator)
            return torch.sigmoid(u)
        u = torch.rand(batch, generator=generator)
        if scheme == 'mode':
            u = 1 - u - float(self.cfg.MODE_SCALE) * (torch.cos(math.pi * u / 2) ** 2 - 1 + u)
        return u

    def sample(self, batch: int, num_timesteps: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Noise levels s, float32 [batch], CPU."""
        u = self.density(batch, generator)
        if self.cfg.DISCRETE:
            return self.table(num_timesteps)[(u * num_timesteps).long().clamp(max=num_timesteps - 1)]
        return shift_sigmas(u, float(self.cfg.SHIFT))


class FlowSamplingSchedule(BaseObject):
    """Base of the sampling grids: `sigmas(steps, image_tokens)` is descending, ends in 0."""

    def shifted(self, s: np.ndarray, image_tokens: int) -> np.ndarray:
        raise NotImplementedError

    def base_grid(self, steps: int, num_timesteps: int) -> np.ndarray:
        """The unshifted levels, in the precision the reference shifts them in."""
        return np.linspace(1.0, 1.0 / steps, steps).astype(np.float32)

    def sigmas(self, steps: int, num_timesteps: int = 1000, image_tokens: int = 4096) -> torch.Tensor:
        if not isinstance(steps, int) or steps < 1:
            raise ConfigError(f'steps: expected a positive integer, got {steps!r}')
        s = self.shifted(self.base_grid(steps, num_timesteps), image_tokens)
        # float32 as the reference schedulers keep them, so both visit the same levels.
        grid = torch.from_numpy(np.asarray(s, dtype=np.float32)).double()
        return torch.cat([grid, grid.new_zeros(1)])


@NOISE_SCHEDULES.register_class()
class FlowMatchShiftScheduler(FlowSamplingSchedule):
    """SD3's sampling grid (diffusers' FlowMatchEulerDiscreteScheduler, fixed shift): N
    levels evenly spaced between the shifted table's ends, then shifted."""

    para_dict = {'SHIFT': {'value': 3.0, 'description': 'Fixed shift (SD3 / SD3.5: 3.0).'}}

    def __init__(self, cfg=None, logger=None):
        super().__init__(cfg, logger)
        _positive(self.cfg, 'SHIFT')

    def base_grid(self, steps: int, num_timesteps: int) -> np.ndarray:
        shift = float(self.cfg.SHIFT)
        top, bottom = 1.0, float(shift_sigmas(np.float32(1.0 / num_timesteps), shift))
        return np.linspace(top * num_timesteps, bottom * num_timesteps, steps) / num_timesteps

    def shifted(self, s: np.ndarray, image_tokens: int) -> np.ndarray:
        return shift_sigmas(s, float(self.cfg.SHIFT))


@NOISE_SCHEDULES.register_class()
class FlowMatchFluxShiftScheduler(FlowSamplingSchedule):
    """FLUX's sampling grid (the FLUX pipelines): linspace(1, 1/N, N), shifted by mu(tokens)."""

    para_dict = {
        'SHIFT': {'value': True, 'description': 'Apply the resolution-dependent shift (FLUX.1-dev and schnell '
                                                'pipelines do; false keeps the plain linspace).'},
        'BASE_SHIFT': {'value': 0.5, 'description': 'mu at BASE_SEQ_LEN image tokens.'},
        'MAX_SHIFT': {'value': 1.15, 'description': 'mu at MAX_SEQ_LEN image tokens.'},
        'BASE_SEQ_LEN': {'value': 256, 'description': 'Image tokens where mu = BASE_SHIFT.'},
        'MAX_SEQ_LEN': {'value': 4096, 'description': 'Image tokens where mu = MAX_SHIFT.'},
        'STATIC_SHIFT': {'value': 1.0, 'description': 'Fixed shift applied instead when SHIFT is false '
                                                      '(a scheduler config without dynamic shifting).'},
        'SIGMOID_SCALE': {'value': 1.0, 'description': "Accepted for Scepter's recipes (its sigmoid schedule); "
                                                       'unused by this grid.'},
    }

    def shifted(self, s: np.ndarray, image_tokens: int) -> np.ndarray:
        if not self.cfg.SHIFT:
            return shift_sigmas(s, float(self.cfg.STATIC_SHIFT))
        c = self.cfg
        return exponential_shift(s, flux_mu(image_tokens, c.BASE_SEQ_LEN, c.MAX_SEQ_LEN, c.BASE_SHIFT, c.MAX_SHIFT))

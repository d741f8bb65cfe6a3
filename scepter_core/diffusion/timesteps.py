"""Which training timesteps a sampler visits, and the sigma grids built from them.

`discretize` follows diffusers' definitions (Lin et al. 2023, Table 2):
  leading   t_min + k * ((t_max - t_min + 1) // N), k = N-1 .. 0   (50 of 1000: 980 .. 0)
  trailing  round(span - k * span / N) - 1 + t_min, k = 0 .. N-1    (50 of 1000: 999 .. 19)
  linspace  N points evenly spaced from t_max to t_min; fractional unless `integer`
            (DDIM/DDPM live on the discrete alphas grid and round, as diffusers' DDIM does)."""
from __future__ import annotations

import numpy as np
import torch

from ..errors import ConfigError

DISCRETIZATIONS = ('leading', 'linspace', 'trailing')


def discretize(discretization: str | None, steps: int, num_timesteps: int, t_max: float | None = None,
               t_min: float | None = None, integer: bool = False) -> torch.Tensor:
    """Descending timesteps, float64 [steps]; discretization None means linspace (Scepter's default)."""
    discretization = discretization or 'linspace'
    if discretization not in DISCRETIZATIONS:
        raise ConfigError(f"discretization: '{discretization}' is not one of {', '.join(DISCRETIZATIONS)}")
    if not isinstance(steps, int) or steps < 1:
        raise ConfigError(f'steps: expected a positive integer, got {steps!r}')
    t_max = num_timesteps - 1 if t_max is None else t_max
    t_min = 0 if t_min is None else t_min
    if not 0 <= t_min < t_max <= num_timesteps - 1:
        raise ConfigError(f't_min / t_max: need 0 <= t_min < t_max <= {num_timesteps - 1}, '
                          f'got t_min={t_min}, t_max={t_max}')
    if integer:
        t_max, t_min = int(t_max), int(t_min)
    span = t_max - t_min + 1
    if discretization == 'leading':
        ts = t_min + np.arange(steps)[::-1] * (span // steps)
    elif discretization == 'trailing':
        ts = t_min + np.round(np.arange(span, 0, -span / steps))[:steps] - 1
    else:
        ts = np.linspace(t_min, t_max, steps)[::-1]
        ts = np.round(ts) if integer else ts
    return torch.as_tensor(np.ascontiguousarray(ts), dtype=torch.float64).clamp(t_min, t_max)


PREV_TIMESTEPS = ('next', 'strided')


def strided_targets(ts: torch.Tensor, num_timesteps: int) -> torch.Tensor:
    """Where diffusers' DDIMScheduler (and DDPMScheduler) step each visited timestep t to:
    t - T // N (N = len(ts)) whatever the spacing, not the next visited timestep; -1 (the
    clean end, alpha = 1) below 0. With linspace, or T not a multiple of N, the two differ."""
    return (ts - num_timesteps // len(ts)).clamp(min=-1)


def karras_sigmas(sigmas: torch.Tensor, rho: float = 7.0) -> torch.Tensor:
    """Re-space the positive sigmas of a grid as Karras et al. (2022) eq. 5, same ends and
    count; a trailing zero stays."""
    positive = sigmas[sigmas > 0]
    n = len(positive)
    if n < 2:
        return sigmas
    lo, hi = positive.min() ** (1 / rho), positive.max() ** (1 / rho)
    ramp = torch.linspace(0, 1, n, dtype=sigmas.dtype)
    out = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([out, sigmas.new_zeros(len(sigmas) - n)])


def strength_start(num_sigmas: int, strength: float, flow: bool = False) -> int:
    """Index into a grid of `num_sigmas` (last one 0) where img2img begins: it runs
    int(steps * strength) steps (diffusers' SD / SDXL img2img rule), or with `flow` skips
    int(steps - steps * strength) (its FLUX / SD3 img2img rule); at least one step."""
    if not 0.0 < strength <= 1.0:
        raise ConfigError(f'denoising_strength: expected a value in (0, 1], got {strength}')
    steps = num_sigmas - 1
    run = steps - int(steps - steps * strength) if flow else int(steps * strength)
    return steps - min(max(run, 1), steps)


def split_at(ts: torch.Tensor | None, num_timesteps: int, start: int, last: int, denoising_start: float | None,
             denoising_end: float | None, has_x: bool) -> tuple[int, int]:
    """(first, last) indices into a sigma grid (the visited timesteps `ts`, then 0) that a run
    covers: `start` (from the strength) to `last`, or diffusers' split of the visited timesteps
    at T - fraction * T (rounded): denoising_start keeps those below it, denoising_end those at
    or above it (SDXL base -> refiner)."""
    if denoising_start is None and denoising_end is None:
        return start, last
    if ts is None:
        raise ConfigError('denoising_start / denoising_end: a discrete-time (VP) diffusion only; '
                          'a flow run takes denoising_strength')
    if denoising_start is not None and not has_x:
        raise ConfigError('denoising_start: pass x, the latent a first run stopped at (denoising_end)')

    def cutoff(key: str, value: float) -> int:
        if not 0.0 < value < 1.0:
            raise ConfigError(f'{key}: expected a value in (0, 1), got {value}')
        return int(round(num_timesteps - value * num_timesteps))
    if denoising_start is not None:
        start = int((ts >= cutoff('denoising_start', denoising_start)).sum())
    if denoising_end is not None:
        last = int((ts >= cutoff('denoising_end', denoising_end)).sum())
    if start >= last:
        raise ConfigError(f'denoising_start {denoising_start} / denoising_end {denoising_end}: no step left of '
                          f'the {len(ts)} visited timesteps')
    return start, last

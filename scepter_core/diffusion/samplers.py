"""Samplers (DIFFUSION_SAMPLERS): short functions over one protocol, k-diffusion style.

    sample_x(denoise, x, sigmas, generator=None, callback=None, **options) -> x

`denoise(x, sigma) -> x0` (see denoiser.py), `x` starts at noise level `sigmas[0]`
(x = x0 + sigma * eps), `sigmas` is a descending CPU float64 grid ending in 0, and the
result is the sample at sigma = 0. Noise comes from `generator` (on x's device), so a
seed reproduces a run. `callback` receives {'i', 'x', 'sigma', 'denoised'} after step i
(x is then at sigma = sigmas[i + 1]).

`register_sampler` also registers `NAME_karras` (the same function on a Karras-spaced
grid). Users register their own functions with `DIFFUSION_SAMPLERS.register_function()`.
The DPM-Solver++ family lives in samplers_dpmpp.py."""
from __future__ import annotations

import functools
from typing import Any, Callable

import numpy as np
import torch

from ..registry import DIFFUSION_SAMPLERS
from .timesteps import karras_sigmas

Callback = Callable[[dict], Any] | None


def register_sampler(name: str, karras: bool = True, discrete_timesteps: bool = False,
                     discard_penultimate_step: bool = False, aliases: tuple[str, ...] = (),
                     spaces: tuple[str, ...] = ('vp',)) -> Callable:
    """Register a sampler function as `name` (and `name_karras` unless karras=False).

    spaces: the forward processes whose sampler variable it integrates: 'vp' (x = x_t /
    alpha_t, sigma = sqrt(1 - a_t) / sqrt(a_t)) and/or 'flow' (x = x_t = (1 - s) x0 + s eps,
    sigma = s). ODE solvers of dx/dsigma = (x - x0) / sigma serve both: that is the
    probability-flow ODE in either variable.

    discrete_timesteps: the sampler lives on the training timesteps' alphas grid, so a
    linspace discretization is rounded to integers. discard_penultimate_step: drop the
    last positive sigma by default (the sampler would add noise there that no later step
    removes)."""
    def deco(fn: Callable) -> Callable:
        fn.discrete_timesteps = discrete_timesteps
        fn.discard_penultimate_step = discard_penultimate_step
        fn.spaces = spaces
        DIFFUSION_SAMPLERS.register_function(name, aliases=aliases)(fn)
        if karras:
            DIFFUSION_SAMPLERS.register_function(f'{name}_karras')(with_karras_sigmas(fn))
        return fn
    return deco


def with_karras_sigmas(fn: Callable) -> Callable:
    """The same sampler on a Karras-spaced grid with the same ends and step count."""
    @functools.wraps(fn)
    def on_karras_grid(denoise: Callable, x: torch.Tensor, sigmas: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return fn(denoise, x, karras_sigmas(sigmas), **kwargs)
    return on_karras_grid


# ---- shared pieces -------------------------------------------------------------------
def randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """dx/dsigma of the probability-flow ODE."""
    return (x - denoised) / sigma


def ancestral_step(sigma_from: torch.Tensor, sigma_to: torch.Tensor, eta: float = 1.0) -> tuple:
    """(sigma_down, sigma_up): step deterministically to sigma_down, then add noise of
    std sigma_up, landing at sigma_to. eta = 1 is the DDPM posterior, 0 no noise."""
    if not eta or sigma_to == 0:
        return sigma_to, sigma_to * 0
    up = torch.minimum(sigma_to, eta * (sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2) ** 0.5)
    return (sigma_to ** 2 - up ** 2) ** 0.5, up


def report_step(callback: Callback, i: int, x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> None:
    if callback is not None:
        callback({'i': i, 'x': x, 'sigma': sigma, 'denoised': denoised})


# ---- single steps from sigma to sigma_to (> 0), given x0 = denoised at sigma ------------
def euler_step(denoise, x, sigma, sigma_to, denoised):
    return x + to_d(x, sigma, denoised) * (sigma_to - sigma)


def heun_step(denoise, x, sigma, sigma_to, denoised):
    """Euler, then the trapezoid rule with the slope at the Euler point."""
    d = to_d(x, sigma, denoised)
    x_2 = x + d * (sigma_to - sigma)
    d_2 = to_d(x_2, sigma_to, denoise(x_2, sigma_to))
    return x + (d + d_2) / 2 * (sigma_to - sigma)


def dpm2_step(denoise, x, sigma, sigma_to, denoised):
    """DPM-Solver-2: the slope at the log-midpoint carries the whole step."""
    sigma_mid = sigma.log().lerp(sigma_to.log(), 0.5).exp()
    x_2 = x + to_d(x, sigma, denoised) * (sigma_mid - sigma)
    return x + to_d(x_2, sigma_mid, denoise(x_2, sigma_mid)) * (sigma_to - sigma)


def run_steps(step: Callable, denoise, x, sigmas, eta=0.0, s_noise=1.0, generator=None, callback=None,
              sigmas_to=None):
    """The loop the single-step samplers share: x0 at sigma_i, `step` down to sigma_down
    (Euler when that is 0), then fresh noise of std sigma_up; eta = 0 is deterministic.
    `sigmas_to[i]`, when given, is where step i lands instead of sigmas[i + 1] (diffusers'
    DDIM strides); the model's x_t = x / sqrt(1 + sigma^2) is then read as at sigmas[i + 1]."""
    for i in range(len(sigmas) - 1):
        target = sigmas[i + 1] if sigmas_to is None else sigmas_to[i]
        denoised = denoise(x, sigmas[i])
        down, up = ancestral_step(sigmas[i], target, eta)
        x = (step if down > 0 else euler_step)(denoise, x, sigmas[i], down, denoised)
        if up > 0:
            x = x + randn_like(x, generator) * (s_noise * up)
        if target != sigmas[i + 1]:
            x = x * float(((1 + sigmas[i + 1] ** 2) / (1 + target ** 2)).sqrt())
        report_step(callback, i, x, sigmas[i + 1], denoised)
    return x


# ---- samplers ------------------------------------------------------------------------
@register_sampler('euler', aliases=('flow_euler',), spaces=('vp', 'flow'))
def sample_euler(denoise, x, sigmas, generator=None, callback=None):
    """Euler's method on the probability-flow ODE (Karras et al. 2022, Alg. 1 without churn)."""
    return run_steps(euler_step, denoise, x, sigmas, callback=callback)


@register_sampler('euler_ancestral', aliases=('euler_a',))
def sample_euler_ancestral(denoise, x, sigmas, generator=None, callback=None, eta=1.0, s_noise=1.0):
    """Euler step to sigma_down, then fresh noise up to the next sigma."""
    return run_steps(euler_step, denoise, x, sigmas, eta, s_noise, generator, callback)


@register_sampler('ddim', karras=False, discrete_timesteps=True)
def sample_ddim(denoise, x, sigmas, generator=None, callback=None, eta=0.0, sigmas_to=None):
    """DDIM (Song et al. 2021). In x = x_t / alpha_t its update with eta is exactly an Euler
    step to sigma_down plus noise sigma_up (euler_ancestral's step), deterministic at eta 0."""
    return run_steps(euler_step, denoise, x, sigmas, eta, 1.0, generator, callback, sigmas_to)


@register_sampler('ddpm', karras=False, discrete_timesteps=True)
def sample_ddpm(denoise, x, sigmas, generator=None, callback=None, sigmas_to=None):
    """Ancestral sampling from the DDPM posterior q(x_prev | x_t, x0) with variance
    beta_tilde (Ho et al. 2020), which is DDIM with eta = 1."""
    return run_steps(euler_step, denoise, x, sigmas, 1.0, 1.0, generator, callback, sigmas_to)


@register_sampler('heun', aliases=('flow_heun',), spaces=('vp', 'flow'))
def sample_heun(denoise, x, sigmas, generator=None, callback=None):
    """Heun's method (Karras et al. 2022, Alg. 1); Euler for the last step to sigma = 0."""
    return run_steps(heun_step, denoise, x, sigmas, callback=callback)


@register_sampler('dpm2', discard_penultimate_step=True)
def sample_dpm2(denoise, x, sigmas, generator=None, callback=None):
    """DPM-Solver-2 (Lu et al. 2022) in Karras et al.'s Alg. 2 form."""
    return run_steps(dpm2_step, denoise, x, sigmas, callback=callback)


@register_sampler('dpm2_ancestral', discard_penultimate_step=True)
def sample_dpm2_ancestral(denoise, x, sigmas, generator=None, callback=None, eta=1.0, s_noise=1.0):
    """DPM-Solver-2 to sigma_down, then fresh noise up to the next sigma."""
    return run_steps(dpm2_step, denoise, x, sigmas, eta, s_noise, generator, callback)


# ---- linear multistep ----------------------------------------------------------------
def lms_coefficient(sigmas: np.ndarray, i: int, j: int, order: int) -> float:
    """Integral over [sigmas[i], sigmas[i+1]] of the Lagrange basis polynomial that is 1 at
    sigmas[i-j] and 0 at the other `order - 1` previous sigmas (exact polynomial integral)."""
    others = [sigmas[i - k] for k in range(order) if k != j]
    poly = np.poly1d(np.poly(others)) / np.prod([sigmas[i - j] - s for s in others])
    antiderivative = poly.integ()
    return float(antiderivative(sigmas[i + 1]) - antiderivative(sigmas[i]))


@register_sampler('lms')
def sample_lms(denoise, x, sigmas, generator=None, callback=None, order=4):
    """Linear multistep on the ODE derivative (k-diffusion's LMS, Adams-Bashforth in sigma)."""
    grid = sigmas.double().numpy()
    ds: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = denoise(x, sigmas[i])
        ds.append(to_d(x, sigmas[i], denoised))
        ds = ds[-order:]
        cur = len(ds)
        coeffs = [lms_coefficient(grid, i, j, cur) for j in range(cur)]
        x = x + sum(c * d for c, d in zip(coeffs, reversed(ds)))
        report_step(callback, i, x, sigmas[i + 1], denoised)
    return x


__all__ = ['register_sampler', 'with_karras_sigmas', 'ancestral_step', 'to_d', 'randn_like', 'report_step',
           'run_steps', 'euler_step', 'heun_step', 'dpm2_step', 'lms_coefficient', 'sample_euler',
           'sample_euler_ancestral', 'sample_ddim', 'sample_ddpm', 'sample_heun', 'sample_dpm2',
           'sample_dpm2_ancestral', 'sample_lms']

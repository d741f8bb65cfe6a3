"""The one interface every sampler uses: `D(x, sigma) -> x0`.

Samplers work in k-diffusion's variable `x = x_t / alpha_t = x0 + sigma * eps`, where
`sigma = sqrt((1 - a_t) / a_t)` (a_t = alphas_cumprod). A `Denoiser` turns a network
trained on the variance-preserving `x_t` at timesteps 0..T-1 into that interface:
it scales the input, maps sigma to a (possibly fractional) timestep by interpolating
log-sigmas between the training timesteps, and converts eps / v / x0 predictions to x0."""
from __future__ import annotations

import math
from typing import Callable

import torch

from .parameterization import convert

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# Zero-terminal-SNR schedules have a_T = 0 (sigma = inf); samplers need a finite start,
# so a_t is floored at the smallest float16 subnormal (as diffusers does): sigma ~ 4096.
MIN_ALPHA_CUMPROD = 2.0 ** -24


def log_sigmas_of(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """log sigma_t for every training timestep, float64 [T], increasing in t."""
    a = alphas_cumprod.double().clamp(min=MIN_ALPHA_CUMPROD)
    return 0.5 * (torch.log1p(-a) - torch.log(a))


def t_to_sigma(t: torch.Tensor, log_sigmas: torch.Tensor) -> torch.Tensor:
    """sigma at (fractional) timesteps t, interpolating log-sigma linearly."""
    t = torch.as_tensor(t, dtype=torch.float64).clamp(0, len(log_sigmas) - 1)
    low = t.floor().long().clamp(max=len(log_sigmas) - 2)
    w = t - low
    return torch.lerp(log_sigmas[low], log_sigmas[low + 1], w).exp()


def sigma_to_t(sigma: torch.Tensor, log_sigmas: torch.Tensor) -> torch.Tensor:
    """The inverse of `t_to_sigma` (clamped to [0, T-1])."""
    log_sigma = torch.as_tensor(sigma, dtype=torch.float64).log()
    high = torch.searchsorted(log_sigmas, log_sigma).clamp(1, len(log_sigmas) - 1)
    low = high - 1
    w = ((log_sigma - log_sigmas[low]) / (log_sigmas[high] - log_sigmas[low])).clamp(0, 1)
    return low + w


class Denoiser:
    """`D(x, sigma) -> x0` over `model_fn(x_t, t) -> prediction` (eps, v or x0).

    `sigma` is a float / 0-dim tensor (one noise level for the whole batch, the fast
    path: no host-device transfer) or a tensor [B] of per-sample levels."""

    def __init__(self, model_fn: ModelFn, log_sigmas: torch.Tensor, prediction_type: str):
        self.model_fn = model_fn
        self.log_sigmas = log_sigmas.double().cpu()
        self.prediction_type = prediction_type

    def sigma_to_t(self, sigma: torch.Tensor | float) -> torch.Tensor:
        return sigma_to_t(torch.as_tensor(sigma).detach().cpu(), self.log_sigmas)

    def t_to_sigma(self, t: torch.Tensor | float) -> torch.Tensor:
        return t_to_sigma(torch.as_tensor(t).detach().cpu(), self.log_sigmas)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        sigma = torch.as_tensor(sigma).detach().to('cpu', torch.float64)
        batch = x.shape[0]
        if sigma.ndim == 0:
            s = float(sigma)
            t = torch.full((batch,), float(self.sigma_to_t(sigma)), device=x.device, dtype=torch.float32)
            alpha = 1.0 / math.sqrt(1.0 + s * s)
            sigma_vp = s * alpha
        else:
            shape = (batch,) + (1,) * (x.ndim - 1)
            t = self.sigma_to_t(sigma).to(x.device, torch.float32).expand(batch)
            alpha64 = (1.0 + sigma ** 2).rsqrt()
            alpha = alpha64.to(x.device, x.dtype).view(shape)
            sigma_vp = (sigma * alpha64).to(x.device, x.dtype).view(shape)
        xt = x * alpha
        out = self.model_fn(xt, t).to(x.dtype)
        return convert(out, self.prediction_type, 'x0', xt, alpha, sigma_vp)

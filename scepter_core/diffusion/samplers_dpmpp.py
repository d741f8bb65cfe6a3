"""DPM-Solver++ samplers (Lu et al. 2022, arXiv:2211.01095) in the data-prediction form,
written in lambda = -log(sigma), the half log-SNR. Same protocol as samplers.py."""
from __future__ import annotations

import torch

from ..errors import ConfigError
from .samplers import ancestral_step, randn_like, register_sampler, report_step, run_steps, to_d


def _lam(sigma: torch.Tensor) -> torch.Tensor:
    return -sigma.log()


def _exp_step(x: torch.Tensor, sigma: torch.Tensor, sigma_to: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """First-order exponential-integrator step from sigma to sigma_to (> 0) with a fixed x0."""
    h = _lam(sigma_to) - _lam(sigma)
    return (sigma_to / sigma) * x - torch.expm1(-h) * denoised


def dpmpp_2s_step(denoise, x, sigma, sigma_to, denoised):
    """DPM-Solver++(2S): x0 re-estimated at the lambda-midpoint carries the whole step."""
    sigma_mid = (sigma * sigma_to).sqrt()
    x_2 = _exp_step(x, sigma, sigma_mid, denoised)
    return _exp_step(x, sigma, sigma_to, denoise(x_2, sigma_mid))


@register_sampler('dpmpp_2s_ancestral')
def sample_dpmpp_2s_ancestral(denoise, x, sigmas, generator=None, callback=None, eta=1.0, s_noise=1.0):
    """DPM-Solver++(2S) to sigma_down, then fresh noise up to the next sigma."""
    return run_steps(dpmpp_2s_step, denoise, x, sigmas, eta, s_noise, generator, callback)


@register_sampler('dpmpp_2m')
def sample_dpmpp_2m(denoise, x, sigmas, generator=None, callback=None):
    """DPM-Solver++(2M): second-order multistep reusing the previous x0 prediction."""
    old_denoised, h_last = None, None
    for i in range(len(sigmas) - 1):
        denoised = denoise(x, sigmas[i])
        h = _lam(sigmas[i + 1]) - _lam(sigmas[i])
        if sigmas[i + 1] == 0:
            x = denoised
        elif old_denoised is None:
            x = _exp_step(x, sigmas[i], sigmas[i + 1], denoised)
        else:
            r = h_last / h
            corrected = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = _exp_step(x, sigmas[i], sigmas[i + 1], corrected)
        old_denoised, h_last = denoised, h
        report_step(callback, i, x, sigmas[i + 1], denoised)
    return x


@register_sampler('dpmpp_sde')
def sample_dpmpp_sde(denoise, x, sigmas, generator=None, callback=None, eta=1.0, s_noise=1.0, r=0.5):
    """DPM-Solver++ (stochastic, 2 stages): ancestral steps to the stage point
    lambda + r h and to the next sigma. k-diffusion drives this with a Brownian tree;
    here independent generator-seeded normals stand in for its increments."""
    for i in range(len(sigmas) - 1):
        denoised = denoise(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
        else:
            lam, lam_next = _lam(sigmas[i]), _lam(sigmas[i + 1])
            sigma_s = (-(lam + r * (lam_next - lam))).exp()
            fac = 1 / (2 * r)
            down, up = ancestral_step(sigmas[i], sigma_s, eta)
            x_2 = _exp_step(x, sigmas[i], down, denoised) + randn_like(x, generator) * (s_noise * up)
            denoised_2 = denoise(x_2, sigma_s)
            down, up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
            x = _exp_step(x, sigmas[i], down, (1 - fac) * denoised + fac * denoised_2)
            x = x + randn_like(x, generator) * (s_noise * up)
        report_step(callback, i, x, sigmas[i + 1], denoised)
    return x


@register_sampler('dpmpp_2m_sde', discard_penultimate_step=True)
def sample_dpmpp_2m_sde(denoise, x, sigmas, generator=None, callback=None, eta=1.0, s_noise=1.0,
                        solver_type='midpoint'):
    """DPM-Solver++(2M) SDE: the multistep update of the reverse SDE with noise eta."""
    if solver_type not in ('midpoint', 'heun'):
        raise ConfigError(f"solver_type: '{solver_type}' is not one of midpoint, heun")
    old_denoised, h_last = None, None
    for i in range(len(sigmas) - 1):
        denoised = denoise(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = _lam(sigmas[i + 1]) - _lam(sigmas[i])
            eta_h = eta * h
            decay = -torch.expm1(-h - eta_h)
            x = (sigmas[i + 1] / sigmas[i]) * (-eta_h).exp() * x + decay * denoised
            if old_denoised is not None:
                slope = (denoised - old_denoised) * (h / h_last)
                weight = decay / (-h - eta_h) + 1 if solver_type == 'heun' else 0.5 * decay
                x = x + weight * slope
            if eta:
                x = x + randn_like(x, generator) * (sigmas[i + 1] * (-torch.expm1(-2 * eta_h)).sqrt() * s_noise)
            h_last = h
        old_denoised = denoised
        report_step(callback, i, x, sigmas[i + 1], denoised)
    return x


# ---- rectified flow: x = x_t = (1 - s) x0 + s eps, sigma = s ---------------------------------
def _flow_lam(s: torch.Tensor) -> torch.Tensor:
    """Half log-SNR log((1 - s) / s): -inf at s = 1 (pure noise), +inf at s = 0."""
    return torch.log1p(-s) - torch.log(s)


@register_sampler('flow_dpmpp_2m', karras=False, spaces=('flow',))
def sample_flow_dpmpp_2m(denoise, x, sigmas, generator=None, callback=None):
    """DPM-Solver++(2M) for rectified flow: the same exponential integrator in alpha = 1 - s,
    sigma = s. From s = 1 (h infinite) the first step is exact for a fixed x0."""
    old_denoised, h_last = None, None
    for i in range(len(sigmas) - 1):
        s, s_to = sigmas[i], sigmas[i + 1]
        denoised = denoise(x, s)
        if s_to == 0:
            x = denoised
        else:
            h = _flow_lam(s_to) - _flow_lam(s)
            target = denoised
            # second order from the second finite step on; the last jump to the smallest level
            # spans many half log-SNRs, where the extrapolation overshoots: keep it first order
            if old_denoised is not None and torch.isfinite(h_last) and i < len(sigmas) - 3:
                r = h_last / h
                target = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = float(s_to / s) * x - float((1 - s_to) * torch.expm1(-h)) * target
            h_last = h
        old_denoised = denoised
        report_step(callback, i, x, s_to, denoised)
    return x

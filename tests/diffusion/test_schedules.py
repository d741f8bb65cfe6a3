"""Noise schedules against diffusers' DDPMScheduler and their own definitions."""
from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDPMScheduler

from scepter_core.diffusion import GaussianDiffusion, rescale_zero_terminal_snr
from scepter_core.errors import ConfigError
from scepter_core.registry import NOISE_SCHEDULES

CASES = [
    ('linear', {'BETA_MIN': 0.0001, 'BETA_MAX': 0.02}, dict(beta_start=0.0001, beta_end=0.02)),
    ('scaled_linear', {'BETA_MIN': 0.00085, 'BETA_MAX': 0.012}, dict(beta_start=0.00085, beta_end=0.012)),
    ('squaredcos_cap_v2', {}, {}),
]


@pytest.mark.parametrize('zero_snr', [False, True])
@pytest.mark.parametrize('name,keys,diffusers_kw', CASES)
def test_alphas_cumprod_match_diffusers(name, keys, diffusers_kw, zero_snr):
    ours = GaussianDiffusion({'SCHEDULE': {'NAME': name, **keys}, 'ZERO_TERMINAL_SNR': zero_snr})
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule=name, rescale_betas_zero_snr=zero_snr,
                        **diffusers_kw)
    assert ours.alphas_cumprod.dtype == torch.float64
    torch.testing.assert_close(ours.alphas_cumprod, ref.alphas_cumprod.double(), atol=1e-6, rtol=0)
    # diffusers derives zero-SNR betas from float32 ratios of tiny alphas: looser there
    torch.testing.assert_close(ours.betas, ref.betas.double(), atol=1e-5, rtol=0)
    assert ours.num_timesteps == 1000


def test_zero_terminal_snr_keeps_first_step_and_zeroes_last(make_diffusion):
    plain, zero = make_diffusion(), make_diffusion(ZERO_TERMINAL_SNR=True)
    assert zero.alphas_cumprod[-1] == 0 and zero.snr(torch.tensor([999]))[0] == 0
    assert math.isclose(zero.alphas_cumprod[0], plain.alphas_cumprod[0], rel_tol=1e-12)
    # sqrt(a) is an affine map of the original: the rescale is linear in sqrt(a)
    root, new_root = plain.alphas_cumprod.sqrt(), zero.alphas_cumprod.sqrt()
    slope = (new_root[0] - new_root[500]) / (root[0] - root[500])
    torch.testing.assert_close(new_root - new_root[0], slope * (root - root[0]))
    assert rescale_zero_terminal_snr(plain.alphas_cumprod).dtype == torch.float64


def test_logsnr_cosine_interp_follows_its_definition():
    keys = {'LOGSNR_MIN': -12.0, 'LOGSNR_MAX': 10.0, 'SCALE_MIN': 2.0, 'SCALE_MAX': 4.0}
    schedule = NOISE_SCHEDULES.build({'NAME': 'logsnr_cosine_interp', **keys})
    n = 500
    logsnr = torch.logit(schedule.alphas_cumprod(n))
    # ends: the cosine curve's extremes, shifted by -2 log(scale) of that end
    assert math.isclose(logsnr[0], 10.0 - 2 * math.log(2.0), abs_tol=1e-6)
    assert math.isclose(logsnr[-1], -12.0 - 2 * math.log(4.0), abs_tol=1e-6)
    # middle: the cosine curve at mid-angle, half-way between the two shifts
    lo, hi = math.atan(math.exp(-5.0)), math.atan(math.exp(6.0))
    frac = 250 / (n - 1)
    expected = -2 * math.log(math.tan(lo + frac * (hi - lo))) - 2 * ((1 - frac) * math.log(2) + frac * math.log(4))
    assert math.isclose(logsnr[250], expected, abs_tol=1e-6)
    assert torch.all(logsnr[1:] < logsnr[:-1])


def test_schedule_errors_name_the_problem():
    with pytest.raises(ConfigError, match='BETA_MIN'):
        GaussianDiffusion({'SCHEDULE': {'NAME': 'linear', 'BETA_MIN': 0.5, 'BETA_MAX': 0.1}})
    with pytest.raises(ConfigError, match='scaled_linear'):
        GaussianDiffusion({'SCHEDULE': {'NAME': 'scaled_linaer'}})
    with pytest.raises(ConfigError, match='PREDICTION_TYPE'):
        GaussianDiffusion({'PREDICTION_TYPE': 'epsilon'})

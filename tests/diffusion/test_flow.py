"""Rectified flow (FlowMatchDiffusion) against the math and the reference schedulers.

For data x0 ~ N(mu, c^2) per element the flow ODE from x_1 = z is linear and lands on
x0 = mu + c z exactly, so a deterministic sampler must return mu + c * noise elementwise
(up to its discretization error); the ideal network's velocity is (x_t - E[x0 | x_t]) / s."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler
from diffusers.pipelines.flux.pipeline_flux import calculate_shift
from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3

from scepter_core.diffusion import FlowMatchDiffusion
from scepter_core.diffusion.parameterization import convert
from scepter_core.errors import ConfigError
from scepter_core.registry import DIFFUSIONS

MU, C = 0.5, 0.3
SD3 = {'SAMPLER_SCHEDULER': {'NAME': 'FlowMatchShiftScheduler', 'SHIFT': 3.0}}
FLUX = {'SAMPLER_SCHEDULER': {'NAME': 'FlowMatchFluxShiftScheduler'}}


def ideal_velocity(x: torch.Tensor, t: torch.Tensor, **_) -> torch.Tensor:
    s = (t.double() / 1000).view(-1, *[1] * (x.ndim - 1))
    gain = (1 - s) * C ** 2 / ((1 - s) ** 2 * C ** 2 + s ** 2)
    x0 = MU + gain * (x.double() - (1 - s) * MU)
    return ((x.double() - x0) / s).to(x.dtype)


@pytest.fixture(scope='module')
def noise():
    return torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(0))


def test_flow_parameterization_round_trips_for_any_alpha_sigma():
    x0, eps = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    for alpha, sigma in [(0.3, 0.7), (0.6, 0.8), (1.0, 0.0001)]:
        xt = alpha * x0 + sigma * eps
        flow = convert(eps, 'eps', 'flow', xt, alpha, sigma)
        torch.testing.assert_close(flow, eps - x0)
        torch.testing.assert_close(convert(flow, 'flow', 'x0', xt, alpha, sigma), x0)
        torch.testing.assert_close(convert(flow, 'flow', 'eps', xt, alpha, sigma), eps)


@pytest.mark.parametrize('steps', [1, 4, 28, 50])
def test_sd3_grid_equals_diffusers(steps):
    ref = FlowMatchEulerDiscreteScheduler(shift=3.0)
    ref.set_timesteps(steps)
    ours = FlowMatchDiffusion(SD3).sampler_sigmas(steps, None, None, None, False, False, torch.Size([1, 16, 8, 8]))[1]
    torch.testing.assert_close(ours.float(), ref.sigmas, rtol=0, atol=0)


@pytest.mark.parametrize('size', [(32, 32), (64, 96), (128, 128)])
def test_flux_grid_equals_the_flux_pipeline(size):
    steps, (h, w) = 28, size
    tokens = (h // 2) * (w // 2)
    ref = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15)
    ref.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=calculate_shift(tokens, 256, 4096, 0.5, 1.15))
    ours = FlowMatchDiffusion(FLUX).sampler_sigmas(steps, None, None, None, False, False,
                                                   torch.Size([1, 16, h, w]))[1]
    torch.testing.assert_close(ours.float(), ref.sigmas, rtol=0, atol=0)


def _diffusers_loop(scheduler, noise, steps):
    scheduler.set_timesteps(steps)
    x = noise.clone()
    for t in scheduler.timesteps:
        v = ideal_velocity(x, t.expand(x.shape[0]))
        x = scheduler.step(v, t, x).prev_sample
    return x


@pytest.mark.parametrize('name,reference', [('flow_euler', FlowMatchEulerDiscreteScheduler),
                                            ('flow_heun', FlowMatchHeunDiscreteScheduler)])
def test_flow_samplers_equal_the_reference_schedulers(name, reference, noise):
    out = FlowMatchDiffusion(SD3).sample(noise, ideal_velocity, solver=name, steps=12)
    ref = _diffusers_loop(reference(shift=3.0), noise, 12)
    torch.testing.assert_close(out, ref, rtol=0, atol=2e-5)


# Bounds at 50 steps of SD3's grid, measured 0.104 (Euler, first order), 0.0013 (Heun) and
# 0.0049 (DPM-Solver++ 2M, whose last jump to the smallest level is first order), with room
# for other CPUs' rounding; a finer grid must do better still (the sampler converges).
@pytest.mark.parametrize('name,tol', [('flow_euler', 0.12), ('euler', 0.12), ('flow_heun', 2e-3),
                                      ('flow_dpmpp_2m', 0.01)])
def test_flow_samplers_reach_the_closed_form(name, tol, noise):
    diffusion, exact = FlowMatchDiffusion(SD3), MU + C * noise
    err = (diffusion.sample(noise, ideal_velocity, solver=name, steps=50) - exact).abs().max().item()
    assert err < tol, f'{name}: max error {err:.2e}'
    finer = (diffusion.sample(noise, ideal_velocity, solver=name, steps=200) - exact).abs().max().item()
    assert finer < err / 1.5, f'{name}: {finer:.2e} at 200 steps vs {err:.2e} at 50'


def test_second_order_solvers_beat_euler(noise):
    diffusion, exact = FlowMatchDiffusion(FLUX), MU + C * noise
    errors = {n: (diffusion.sample(noise, ideal_velocity, solver=n, steps=28) - exact).abs().max().item()
              for n in ('flow_euler', 'flow_heun', 'flow_dpmpp_2m')}
    assert errors['flow_heun'] < errors['flow_euler'] / 2.5, errors
    assert errors['flow_dpmpp_2m'] < errors['flow_euler'] / 2.5, errors


def test_vp_only_samplers_are_refused_by_name(noise):
    with pytest.raises(ConfigError, match="'ddim'.*flow_euler"):
        FlowMatchDiffusion(SD3).sample(noise, ideal_velocity, solver='ddim', steps=4)


@pytest.mark.parametrize('scheme', ['uniform', 'logit_normal', 'mode'])
def test_training_levels_follow_the_reference_density(scheme):
    cfg = {'NOISE_SCHEDULER': {'NAME': 'FlowMatchSigmaScheduler', 'WEIGHTING_SCHEME': scheme, 'SHIFT': 3.0,
                               'LOGIT_MEAN': 0.1, 'LOGIT_STD': 1.2, 'MODE_SCALE': 1.29}}
    diffusion = FlowMatchDiffusion(cfg)
    t = diffusion.sample_t(64, generator=torch.Generator().manual_seed(7))
    u = compute_density_for_timestep_sampling(scheme, 64, 0.1, 1.2, 1.29, generator=torch.Generator().manual_seed(7))
    ref = FlowMatchEulerDiscreteScheduler(shift=3.0)
    indices = (u * ref.config.num_train_timesteps).long()
    torch.testing.assert_close(t, ref.timesteps[indices], rtol=0, atol=0)


@pytest.mark.parametrize('weighting', ['none', 'sigma_sqrt', 'cosmap'])
def test_loss_equals_the_reference_training_script(weighting):
    """diffusers' SD3/FLUX scripts: noisy = (1 - s) x + s n, target n - x, weighted mean square."""
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 4, 8, 8, generator=g)
    t = torch.tensor([999.0, 700.0, 250.0, 31.0])
    net = torch.nn.Conv2d(4, 4, 3, padding=1)

    def model(xt, tt, **_):
        return net(xt) * (tt / 1000).view(-1, 1, 1, 1)

    ours = FlowMatchDiffusion({'LOSS_WEIGHTING': weighting}).loss(x0, t, model, noise=noise, reduction='mean')
    sigmas = (t / 1000).view(-1, 1, 1, 1)
    noisy = (1 - sigmas) * x0 + sigmas * noise
    weights = compute_loss_weighting_for_sd3(weighting, sigmas)
    ref = torch.mean((weights.float() * (model(noisy, t) - (noise - x0)) ** 2).reshape(4, -1), 1).mean()
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=0)


def test_scepter_flux_recipe_block_builds():
    block = {'NAME': 'DiffusionFluxRF', 'PREDICTION_TYPE': 'raw',
             'NOISE_SCHEDULER': {'NAME': 'FlowMatchSigmaScheduler', 'WEIGHTING_SCHEME': 'logit_normal', 'SHIFT': 3.0,
                                 'LOGIT_MEAN': 0.0, 'LOGIT_STD': 1.0, 'MODE_SCALE': 1.29},
             'SAMPLER_SCHEDULER': {'NAME': 'FlowMatchFluxShiftScheduler', 'SHIFT': False, 'SIGMOID_SCALE': 1,
                                   'BASE_SHIFT': 0.5, 'MAX_SHIFT': 1.15}}
    diffusion = DIFFUSIONS.build(block)
    assert isinstance(diffusion, FlowMatchDiffusion) and diffusion.prediction_type == 'flow'
    sigmas = diffusion.sampler_sigmas(4, None, None, None, False, False, torch.Size([1, 16, 64, 64]))[1]
    torch.testing.assert_close(sigmas, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=torch.float64))


def test_img2img_starts_part_way(noise):
    diffusion = FlowMatchDiffusion(SD3)
    clean = torch.full_like(noise, MU)
    seen = []
    diffusion.sample(None, lambda x, t, **_: seen.append(float(t[0])) or ideal_velocity(x, t), solver='flow_euler',
                     steps=10, x=clean, denoising_strength=0.5, seed=0)
    assert len(seen) == 5 and seen[0] < 1000 * 0.9

"""Every sampler against the math: for data x0 ~ N(mu, s^2) per element the ideal
denoiser is known in closed form, so a correct sampler must return mean ~ mu, std ~ s.

Calibration (SD1.5 schedule, s = 0.3, 100 linspace steps): diffusers' Euler and DDIM
land at std 0.284 / 0.288 (first-order discretization error; the deterministic ones
also miss mean by ~0.01 because sqrt(a_T) mu is not in the starting noise). The bands
below allow for that; the second-order deterministic solvers must do clearly better."""
from __future__ import annotations

import pytest
import torch
from diffusers import EulerDiscreteScheduler

from scepter_core.registry import DIFFUSION_SAMPLERS

MU, S = 0.5, 0.3
BUILTIN = ['ddim', 'ddpm', 'euler', 'euler_ancestral', 'heun', 'dpm2', 'dpm2_ancestral', 'lms',
           'dpmpp_2s_ancestral', 'dpmpp_2m', 'dpmpp_sde', 'dpmpp_2m_sde']
KARRAS = [f'{n}_karras' for n in BUILTIN if n not in ('ddim', 'ddpm')]
SECOND_ORDER = {'heun', 'lms', 'dpmpp_2m', 'heun_karras', 'lms_karras', 'dpmpp_2m_karras'}


@pytest.fixture(scope='module')
def noise():
    return torch.randn(4, 4, 64, 64, generator=torch.Generator().manual_seed(0))


def test_all_builtin_samplers_are_registered():
    assert set(BUILTIN + KARRAS) <= set(DIFFUSION_SAMPLERS.names())
    assert DIFFUSION_SAMPLERS.get('euler_a') is DIFFUSION_SAMPLERS.get('euler_ancestral')


@pytest.mark.parametrize('kind', ['eps', 'v', 'x0'])
def test_samplers_recover_gaussian_data(kind, make_diffusion, ideal_model, noise):
    diffusion = make_diffusion(PREDICTION_TYPE=kind)
    model = ideal_model(diffusion.log_sigmas, kind, MU, S)
    failures = []
    for name in BUILTIN + KARRAS:
        out = diffusion.sample(noise, model, solver=name, steps=100, discretization='linspace', seed=3)
        mean, std = out.mean().item(), out.std().item()
        std_tol = 0.015 if name in SECOND_ORDER else 0.035
        if abs(mean - MU) > 0.02 or abs(std - S) > std_tol or not torch.isfinite(out).all():
            failures.append(f'{name}: mean {mean:.4f} std {std:.4f}')
    assert not failures, failures


def test_zero_terminal_snr_v_prediction(make_diffusion, ideal_model, noise):
    """With a_T = 0 the start is exactly pure noise, so even the mean comes out right."""
    diffusion = make_diffusion(PREDICTION_TYPE='v', ZERO_TERMINAL_SNR=True)
    model = ideal_model(diffusion.log_sigmas, 'v', MU, S)
    for name in ['ddim', 'euler', 'dpmpp_2m', 'euler_ancestral', 'dpmpp_2m_sde']:
        out = diffusion.sample(noise, model, solver=name, steps=100, discretization='trailing', seed=3)
        assert abs(out.mean().item() - MU) < 0.005, name
        assert abs(out.std().item() - S) < 0.04, name


def test_calibration_matches_diffusers_euler(make_diffusion, ideal_model, noise, diffusers_sd15):
    diffusion = make_diffusion()
    model = ideal_model(diffusion.log_sigmas, 'eps', MU, S)
    sched = EulerDiscreteScheduler(**diffusers_sd15, timestep_spacing='linspace')
    sched.set_timesteps(100)
    x = noise * (1 + sched.sigmas[0].double() ** 2).sqrt().float()
    for t in sched.timesteps:
        x = sched.step(model(sched.scale_model_input(x, t), t.expand(len(x))), t, x).prev_sample
    ours = diffusion.sample(noise, model, solver='euler', steps=100, discretization='linspace')
    assert 0.27 < x.std().item() < 0.29
    assert abs(ours.std().item() - x.std().item()) < 1e-3 and abs(ours.mean().item() - x.mean().item()) < 1e-3


@pytest.mark.parametrize('name', ['euler_ancestral', 'dpmpp_sde', 'dpmpp_2m_sde', 'ddpm'])
def test_stochastic_samplers_reproduce_from_seed(name, make_diffusion, model_fn):
    diffusion, noise = make_diffusion(), torch.randn(2, 3, 8, 8)
    run = lambda seed: diffusion.sample(noise, model_fn, solver=name, steps=10, seed=seed)  # noqa: E731
    torch.testing.assert_close(run(7), run(7), rtol=0, atol=0)
    assert not torch.allclose(run(7), run(8))


def test_ddim_eta_adds_noise(make_diffusion, model_fn):
    diffusion, noise = make_diffusion(), torch.randn(2, 3, 8, 8)
    plain = diffusion.sample(noise, model_fn, solver='ddim', steps=10, seed=1)
    noisy = diffusion.sample(noise, model_fn, solver='ddim', steps=10, seed=1, eta=1.0)
    as_ddpm = diffusion.sample(noise, model_fn, solver='ddpm', steps=10, seed=1)
    assert not torch.allclose(plain, noisy)
    torch.testing.assert_close(noisy, as_ddpm)  # DDIM with eta = 1 is DDPM


def test_user_registered_sampler_is_used_by_name(make_diffusion, model_fn):
    calls = []

    @DIFFUSION_SAMPLERS.register_function('test_only_euler_copy', force=True)
    def my_sampler(denoise, x, sigmas, generator=None, callback=None):
        for i in range(len(sigmas) - 1):
            calls.append(i)
            x = x + (x - denoise(x, sigmas[i])) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
        return x

    diffusion, noise = make_diffusion(), torch.randn(2, 3, 8, 8)
    got = diffusion.sample(noise, model_fn, solver='test_only_euler_copy', steps=12)
    torch.testing.assert_close(got, diffusion.sample(noise, model_fn, solver='euler', steps=12))
    assert len(calls) == 12


def test_discard_penultimate_step_defaults(make_diffusion, model_fn):
    """dpm2 / dpm2_ancestral / dpmpp_2m_sde visit one extra timestep and skip the last
    positive sigma by default, keeping the step count; others keep the full grid."""
    diffusion, noise = make_diffusion(), torch.randn(1, 1, 4, 4)
    for name, default in [('dpm2', True), ('dpmpp_2m_sde_karras', True), ('euler', False)]:
        run = lambda **kw: diffusion.sample(noise, model_fn, solver=name, steps=10, seed=0, **kw)  # noqa: E731
        torch.testing.assert_close(run(), run(discard_penultimate_step=default))
        assert not torch.allclose(run(), run(discard_penultimate_step=not default))
        levels = []
        run(intermediate_callback=levels.append)
        assert len(levels) == 10
    grid = diffusion.sigma_grid(10, 'linspace', discard_penultimate_step=True)
    full = diffusion.sigma_grid(11, 'linspace')
    torch.testing.assert_close(grid, torch.cat([full[:-2], full[-1:]]))


def test_unknown_sampler_suggests_names(make_diffusion, model_fn):
    from scepter_core.errors import ConfigError
    with pytest.raises(ConfigError, match='dpmpp_2m'):
        make_diffusion().sample(torch.randn(1, 1, 2, 2), model_fn, solver='dpmpp_2n')

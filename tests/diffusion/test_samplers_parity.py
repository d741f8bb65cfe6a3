"""Deterministic samplers against diffusers' schedulers: the same fixed model function and
initial noise; diffusers' loop (scale_model_input, model, step) is run here."""
from __future__ import annotations

import pytest
import torch
from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler,
                       HeunDiscreteScheduler, LMSDiscreteScheduler)

PRED = {'eps': 'epsilon', 'v': 'v_prediction'}


@pytest.fixture
def noise():
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def run_diffusers(scheduler, model, init, steps=None, timesteps=None):
    scheduler.set_timesteps(steps, timesteps=timesteps) if timesteps is not None else scheduler.set_timesteps(steps)
    x = init.clone()
    for t in scheduler.timesteps:
        out = model(scheduler.scale_model_input(x, t), t.expand(len(x)))
        x = scheduler.step(out, t, x).prev_sample
    return x


def vp_start(scheduler, noise, steps):
    """Diffusers' sigma-space schedulers start at x = noise * sqrt(1 + sigma_max^2) for a
    variance-preserving model (their init_noise_sigma drops the 1 for some spacings)."""
    scheduler.set_timesteps(steps)
    return noise * (1 + scheduler.sigmas[0].double() ** 2).sqrt().float()


def assert_rel_close(got, ref, tol=1e-4):
    err = ((got - ref).abs().max() / ref.abs().max()).item()
    assert err < tol, f'relative error {err:.2e}'


@pytest.mark.parametrize('kind', ['eps', 'v'])
@pytest.mark.parametrize('spacing', ['leading', 'trailing'])
def test_ddim_matches_diffusers(spacing, kind, make_diffusion, model_fn, noise, diffusers_sd15):
    ref_sched = DDIMScheduler(**diffusers_sd15, timestep_spacing=spacing, clip_sample=False,
                              set_alpha_to_one=True, steps_offset=0, prediction_type=PRED[kind])
    ref = run_diffusers(ref_sched, model_fn, noise, 50)
    got = make_diffusion(PREDICTION_TYPE=kind).sample(noise, model_fn, solver='ddim', steps=50,
                                                      discretization=spacing)
    assert_rel_close(got, ref)


def test_ddim_linspace_matches_diffusers_timesteps(make_diffusion, model_fn, noise, diffusers_sd15):
    """On DDIM's rounded linspace timesteps. diffusers' DDIMScheduler itself steps each
    x_t to t - T // N rather than to the next (rounded) timestep, which linspace spacing
    makes differ (prev_timestep='strided' below does that); deterministic DDIM is Euler in
    sigma, so its consistent version is diffusers' Euler on the same timesteps."""
    ddim = DDIMScheduler(**diffusers_sd15, timestep_spacing='linspace')
    ddim.set_timesteps(50)
    euler = EulerDiscreteScheduler(**diffusers_sd15)
    euler.set_timesteps(timesteps=ddim.timesteps.tolist())
    init = noise * (1 + euler.sigmas[0].double() ** 2).sqrt().float()
    ref = run_diffusers(euler, model_fn, init, timesteps=ddim.timesteps.tolist())
    got = make_diffusion().sample(noise, model_fn, solver='ddim', steps=50, discretization='linspace')
    assert_rel_close(got, ref)


@pytest.mark.parametrize('kind', ['eps', 'v'])
@pytest.mark.parametrize('spacing, steps', [('linspace', 50), ('trailing', 30)])
def test_ddim_strided_matches_diffusers_ddim(spacing, steps, kind, make_diffusion, model_fn, noise, diffusers_sd15):
    """prev_timestep='strided' reproduces DDIMScheduler itself (issue #4): each t steps to
    t - T // N, and the sample is read at the next listed timestep as it is. In float64 on
    one schedule (diffusers computes its own in float32, 5e-7 off) the runs agree to rounding."""
    diffusion = make_diffusion(PREDICTION_TYPE=kind)
    ref_sched = DDIMScheduler(**diffusers_sd15, timestep_spacing=spacing, clip_sample=False,
                              set_alpha_to_one=True, steps_offset=0, prediction_type=PRED[kind])
    own_schedule = run_diffusers(ref_sched, model_fn, noise, steps)
    ref_sched.alphas_cumprod = diffusion.alphas_cumprod.double()
    ref = run_diffusers(ref_sched, model_fn, noise.double(), steps)
    got = diffusion.sample(noise.double(), model_fn, solver='ddim', steps=steps, discretization=spacing,
                           prev_timestep='strided')
    assert (got - ref).abs().max().item() < 1e-10
    got32 = diffusion.sample(noise, model_fn, solver='ddim', steps=steps, discretization=spacing,
                             prev_timestep='strided')
    assert_rel_close(got32, own_schedule, 1e-5)  # float32, each its own schedule
    # the default (to the next listed timestep) is another, self-consistent sampler
    plain = diffusion.sample(noise, model_fn, solver='ddim', steps=steps, discretization=spacing)
    assert (plain - own_schedule).abs().max().item() > 1e-3


def test_strided_steps_need_a_sampler_that_takes_them(make_diffusion, model_fn, noise):
    from scepter_core.errors import ConfigError
    with pytest.raises(ConfigError, match='strided'):
        make_diffusion().sample(noise, model_fn, solver='euler', steps=5, prev_timestep='strided')
    with pytest.raises(ConfigError, match='prev_timestep'):
        make_diffusion().sample(noise, model_fn, solver='ddim', steps=5, prev_timestep='previous')


@pytest.mark.parametrize('karras', [False, True])
@pytest.mark.parametrize('spacing', ['leading', 'linspace', 'trailing'])
@pytest.mark.parametrize('name,cls', [('euler', EulerDiscreteScheduler), ('heun', HeunDiscreteScheduler),
                                      ('lms', LMSDiscreteScheduler)])
def test_k_samplers_match_diffusers(name, cls, spacing, karras, make_diffusion, model_fn, noise, diffusers_sd15):
    ref_sched = cls(**diffusers_sd15, timestep_spacing=spacing, use_karras_sigmas=karras)
    ref = run_diffusers(ref_sched, model_fn, vp_start(ref_sched, noise, 30), 30)
    solver = f'{name}_karras' if karras else name
    got = make_diffusion().sample(noise, model_fn, solver=solver, steps=30, discretization=spacing)
    assert_rel_close(got, ref)


def test_euler_v_zero_terminal_snr_matches_diffusers(make_diffusion, model_fn, noise, diffusers_sd15):
    ref_sched = EulerDiscreteScheduler(**diffusers_sd15, timestep_spacing='trailing', rescale_betas_zero_snr=True,
                                       prediction_type='v_prediction')
    ref = run_diffusers(ref_sched, model_fn, vp_start(ref_sched, noise, 25), 25)
    got = make_diffusion(PREDICTION_TYPE='v', ZERO_TERMINAL_SNR=True).sample(
        noise, model_fn, solver='euler', steps=25, discretization='trailing')
    assert_rel_close(got, ref)


def test_dpmpp_2m_matches_diffusers(make_diffusion, model_fn, noise, diffusers_sd15):
    ref = run_diffusers(DPMSolverMultistepScheduler(**diffusers_sd15, timestep_spacing='trailing'),
                        model_fn, noise, 25)
    got = make_diffusion().sample(noise, model_fn, solver='dpmpp_2m', steps=25, discretization='trailing')
    assert_rel_close(got, ref)


def test_dpmpp_2m_karras_matches_diffusers(make_diffusion, noise, diffusers_sd15):
    """diffusers' DPM-Solver rounds its Karras timesteps (and spans the whole schedule, our
    linspace), so this model reads t rounded: both then see the same model."""
    def rounded_t_model(x, t):
        return 0.7 * torch.tanh(x) + 0.1 * torch.cos(t.float().round() / 250).view(-1, 1, 1, 1)

    sched = DPMSolverMultistepScheduler(**diffusers_sd15, use_karras_sigmas=True)
    ref = run_diffusers(sched, rounded_t_model, noise, 25)
    got = make_diffusion().sample(noise, rounded_t_model, solver='dpmpp_2m_karras', steps=25,
                                  discretization='linspace')
    assert_rel_close(got, ref)

"""Partial runs: img2img's strength and the SDXL base -> refiner split (denoising_end /
denoising_start) visit the timesteps diffusers' pipelines visit, and a run split in two
equals the run in one piece."""
from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

from scepter_core.errors import ConfigError



def _visited(diffusion, fixed_model, **kwargs) -> list[float]:
    seen: list[float] = []

    def model(x, t):
        seen.append(float(t[0]))
        return fixed_model(x, t)
    out = diffusion.sample(torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(0)), model,
                           solver='ddim', discretization='trailing', **kwargs)
    return seen, out


@pytest.mark.parametrize('steps,strength', [(50, 0.3), (30, 0.75), (7, 0.5), (4, 0.01)])
def test_strength_starts_where_diffusers_img2img_does(make_diffusion, diffusers_sd15, steps, strength, model_fn):
    ddim = DDIMScheduler(**diffusers_sd15, timestep_spacing='trailing')
    ddim.set_timesteps(steps)
    init = min(int(steps * strength), steps)  # StableDiffusionImg2ImgPipeline.get_timesteps
    expected = ddim.timesteps[steps - init:].tolist() or ddim.timesteps[-1:].tolist()  # ours: one step at least
    seen, _ = _visited(make_diffusion(), model_fn, steps=steps, x=torch.zeros(1, 2, 4, 4), denoising_strength=strength)
    assert seen == pytest.approx(expected, abs=1e-3)


@pytest.mark.parametrize('steps,switch', [(50, 0.8), (25, 0.7), (4, 0.6)])
def test_split_visits_diffusers_timesteps_and_equals_one_run(make_diffusion, diffusers_sd15, steps, switch, model_fn):
    fixed_model = model_fn
    ddim = DDIMScheduler(**diffusers_sd15, timestep_spacing='trailing')
    ddim.set_timesteps(steps)
    cutoff = int(round(1000 - switch * 1000))  # StableDiffusionXL(Img2Img)Pipeline's denoising_end / _start
    base_ts = [t for t in ddim.timesteps.tolist() if t >= cutoff]
    diffusion = make_diffusion()
    seen, whole = _visited(diffusion, model_fn, steps=steps)
    seen_base, xt = _visited(diffusion, model_fn, steps=steps, denoising_end=switch)
    assert seen_base == pytest.approx(base_ts, abs=1e-3)
    seen_refiner, out = _visited(diffusion, model_fn, steps=steps, x=xt, denoising_start=switch)
    assert seen_base + seen_refiner == pytest.approx(seen, abs=1e-3)
    torch.testing.assert_close(out, whole, rtol=1e-5, atol=1e-5)
    # the hand-over is the model's x_t where the one-piece run is after as many steps
    noise = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    _, states = diffusion.sample(noise, fixed_model, solver='ddim', discretization='trailing', steps=steps,
                                 return_intermediate='xt')
    torch.testing.assert_close(xt, states[len(base_ts) - 1], rtol=1e-6, atol=1e-6)


def test_split_errors_name_the_setting(make_diffusion, model_fn):
    fixed_model = model_fn
    diffusion, noise = make_diffusion(), torch.randn(1, 2, 4, 4)
    with pytest.raises(ConfigError, match='denoising_start: pass x'):
        diffusion.sample(noise, fixed_model, steps=4, denoising_start=0.5)
    with pytest.raises(ConfigError, match='denoising_end: expected a value in'):
        diffusion.sample(noise, fixed_model, steps=4, denoising_end=1.5)
    with pytest.raises(ConfigError, match='no step left'):
        diffusion.sample(noise, fixed_model, steps=4, x=noise, denoising_start=0.6, denoising_end=0.5)

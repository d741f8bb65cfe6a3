"""Timestep discretization, the sigma <-> t map and Karras spacing."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler

from scepter_core.diffusion import discretize, karras_sigmas
from scepter_core.errors import ConfigError


@pytest.mark.parametrize('steps', [50, 30, 7])
@pytest.mark.parametrize('spacing', ['leading', 'linspace', 'trailing'])
def test_discretize_matches_diffusers(spacing, steps, diffusers_sd15):
    ddim = DDIMScheduler(**diffusers_sd15, timestep_spacing=spacing, steps_offset=0)
    ddim.set_timesteps(steps)
    euler = EulerDiscreteScheduler(**diffusers_sd15, timestep_spacing=spacing)
    euler.set_timesteps(steps)
    # integer grids as DDIM's; Euler keeps linspace fractional
    assert discretize(spacing, steps, 1000, integer=True).tolist() == ddim.timesteps.double().tolist()
    np.testing.assert_allclose(discretize(spacing, steps, 1000).numpy(), euler.timesteps.double().numpy(),
                               rtol=0, atol=1e-4)


def test_trailing_starts_at_the_last_timestep():
    ts = discretize('trailing', 50, 1000)
    assert ts[0] == 999 and ts[-1] == 19 and len(ts) == 50


def test_t_range_and_errors():
    ts = discretize('linspace', 5, 1000, t_max=800, t_min=100)
    assert ts.tolist() == [800, 625, 450, 275, 100]
    assert discretize('leading', 4, 1000, t_max=499, t_min=100).tolist() == [400, 300, 200, 100]
    with pytest.raises(ConfigError, match='t_max'):
        discretize('linspace', 5, 1000, t_max=1000)
    with pytest.raises(ConfigError, match='discretization'):
        discretize('uniform', 5, 1000)
    with pytest.raises(ConfigError, match='steps'):
        discretize('linspace', 0, 1000)


def test_sigma_t_round_trip(make_diffusion):
    diffusion = make_diffusion()
    t = torch.tensor([0.0, 0.25, 17.5, 500.0, 998.9, 999.0], dtype=torch.float64)
    sigma = diffusion.t_to_sigma(t)
    torch.testing.assert_close(diffusion.sigma_to_t(sigma), t)
    a = diffusion.alphas_cumprod[500]
    assert torch.isclose(sigma[3], ((1 - a) / a).sqrt())
    assert torch.all(sigma[1:] > sigma[:-1])


def test_karras_sigmas_keep_ends_and_count():
    sigmas = torch.cat([torch.linspace(14.6, 0.03, 10, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])
    out = karras_sigmas(sigmas)
    assert len(out) == 11 and out[-1] == 0
    torch.testing.assert_close(out[[0, 9]], sigmas[[0, 9]])
    rho = 7.0
    inner = out[:-1] ** (1 / rho)  # evenly spaced in sigma^(1/rho)
    torch.testing.assert_close(inner[1:] - inner[:-1], (inner[1] - inner[0]).expand(9))

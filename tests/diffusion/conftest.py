"""Fixtures for the diffusion tests: SD1.5's diffusion, a smooth fixed model function and
the ideal denoiser of Gaussian data."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from scepter_core.diffusion import GaussianDiffusion

SD15_SCHEDULE = {'NAME': 'scaled_linear', 'BETA_MIN': 0.00085, 'BETA_MAX': 0.012}
DIFFUSERS_SD15 = dict(beta_schedule='scaled_linear', beta_start=0.00085, beta_end=0.012)


@pytest.fixture(scope='module', autouse=True)
def _single_thread():
    """These tests are many small tensor ops: extra threads only contend for the 2 cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def diffusers_sd15() -> dict:
    """SD1.5's schedule as diffusers' scheduler arguments."""
    return dict(DIFFUSERS_SD15)


@pytest.fixture
def make_diffusion():
    def make(**cfg) -> GaussianDiffusion:
        return GaussianDiffusion({'SCHEDULE': dict(SD15_SCHEDULE), **cfg})
    return make


def fixed_model(x: torch.Tensor, t: torch.Tensor, **_) -> torch.Tensor:
    """A smooth nonlinear stand-in for a network, depending on x and t."""
    return 0.7 * torch.tanh(x) + 0.05 * x + 0.1 * torch.cos(t.float() / 250).view(-1, *[1] * (x.ndim - 1))


@pytest.fixture
def model_fn():
    return fixed_model


def gaussian_denoiser(log_sigmas: torch.Tensor, kind: str, mu: float, s: float):
    """The Bayes-optimal network for data x0 ~ N(mu, s^2) per element: E[target | x_t, t]
    for target eps, v or x0, at (fractional) t read off the log-sigma interpolation."""
    grid = log_sigmas.double().numpy()

    def model(xt: torch.Tensor, t: torch.Tensor, **_) -> torch.Tensor:
        sigma = np.exp(np.interp(t.double().cpu().numpy(), np.arange(len(grid)), grid))
        sigma = torch.from_numpy(sigma).to(xt).view(-1, *[1] * (xt.ndim - 1))
        a = (1 + sigma ** 2).rsqrt()
        n = sigma * a
        x0 = mu + a * s * s / (a * a * s * s + n * n) * (xt - a * mu)
        eps = (xt - a * x0) / n
        return {'x0': x0, 'eps': eps, 'v': a * eps - n * x0}[kind]
    return model


@pytest.fixture
def ideal_model():
    return gaussian_denoiser

"""GaussianDiffusion: the forward process, conversions and the training loss."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from torch import nn

from scepter_core.errors import ConfigError
from scepter_core.registry import DIFFUSIONS, LOSSES


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g), torch.tensor([0, 10, 500, 999])


def test_built_from_a_recipe_block():
    diffusion = DIFFUSIONS.build({'NAME': 'GaussianDiffusion', 'SCHEDULE': {'NAME': 'linear'}, 'TIMESTEPS': 200,
                                  'PREDICTION_TYPE': 'v'})
    assert diffusion.num_timesteps == 200 and len(diffusion.alphas_cumprod) == 200
    assert diffusion.prediction_type == 'v'


def test_diffuse_and_velocity_match_diffusers(make_diffusion, batch, diffusers_sd15):
    x0, noise, t = batch
    ref = DDPMScheduler(**diffusers_sd15)
    diffusion = make_diffusion(PREDICTION_TYPE='v')
    torch.testing.assert_close(diffusion.diffuse(x0, t, noise), ref.add_noise(x0, noise, t))
    torch.testing.assert_close(diffusion.target(x0, noise, t), ref.get_velocity(x0, noise, t))
    a = diffusion.alphas_cumprod[t]
    torch.testing.assert_close(diffusion.snr(t), (a / (1 - a)).float())


def test_conversions_between_eps_x0_and_v(make_diffusion, batch):
    x0, eps, t = batch
    diffusion = make_diffusion()
    xt = diffusion.diffuse(x0, t, eps)
    v = diffusion.predict_v(xt, t, x0=x0)
    torch.testing.assert_close(diffusion.predict_x0(xt, t, eps=eps), x0, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(diffusion.predict_x0(xt, t, v=v), x0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(diffusion.predict_eps(xt, t, v=v), eps, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(diffusion.predict_eps(xt[1:], t[1:], x0=x0[1:]), eps[1:], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(diffusion.predict_v(xt, t, eps=eps), v, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match='exactly one'):
        diffusion.predict_x0(xt, t, eps=eps, v=v)


def _oracle(diffusion, x0):
    """A 'network' that reads the true noise back out of x_t (it knows x0)."""
    def model(xt, t):
        return diffusion.predict_eps(xt, t, x0=x0)
    return model


def test_loss_shapes_weights_and_reduction(make_diffusion, batch):
    x0, noise, t = batch
    diffusion = make_diffusion()
    zero = lambda x, t, **kw: torch.zeros_like(x)  # noqa: E731
    per_sample = diffusion.loss(x0=x0, t=t, model=zero, noise=noise)
    assert per_sample.shape == (4,)
    torch.testing.assert_close(per_sample, (noise ** 2).flatten(1).mean(1))
    w = torch.tensor([1.0, 0.0, 2.0, 0.5])
    torch.testing.assert_close(diffusion.loss(x0, t, zero, noise=noise, weight=w), per_sample * w)
    torch.testing.assert_close(diffusion.loss(x0, t, zero, noise=noise, reduction='mean'), per_sample.mean())
    l1 = LOSSES.build({'NAME': 'ReconstructLoss', 'LOSS_TYPE': 'l1'})
    torch.testing.assert_close(diffusion.loss(x0, t, zero, noise=noise, loss_fn=l1), noise.abs().flatten(1).mean(1))
    huber = make_diffusion(LOSS_TYPE='huber', HUBER_DELTA=0.5).loss(x0, t, zero, noise=noise)
    expected = torch.where(noise.abs() < 0.5, 0.5 * noise ** 2, 0.5 * (noise.abs() - 0.25))
    torch.testing.assert_close(huber, expected.flatten(1).mean(1))
    with pytest.raises(ConfigError, match='reduction'):
        diffusion.loss(x0, t, zero, noise=noise, reduction='sum')


def test_model_gets_model_kwargs(make_diffusion, batch):
    x0, noise, t = batch
    seen = {}

    def model(xt, t, cond=None):
        seen['cond'], seen['t'] = cond, t
        return torch.zeros_like(xt)

    make_diffusion().loss(x0=x0, t=t, model=model, model_kwargs={'cond': 'ctx'}, noise=noise)
    assert seen['cond'] == 'ctx' and torch.equal(seen['t'], t)


@pytest.mark.parametrize('kind', ['eps', 'v', 'x0'])
def test_min_snr_weights_follow_the_formula(kind, make_diffusion, batch):
    x0, noise, t = batch
    gamma = 5.0
    zero = lambda x, t: torch.zeros_like(x)  # noqa: E731
    plain = make_diffusion(PREDICTION_TYPE=kind).loss(x0, t, zero, noise=noise)
    weighted = make_diffusion(PREDICTION_TYPE=kind, MIN_SNR_GAMMA=gamma).loss(x0, t, zero, noise=noise)
    # SD1.5's scaled-linear schedule computed here in float64, not read from the diffusion
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2
    a = np.cumprod(1 - betas)[t.numpy()]
    snr = a / (1 - a)
    expected = {'eps': np.minimum(snr, gamma) / snr, 'v': np.minimum(snr, gamma) / (snr + 1),
                'x0': np.minimum(snr, gamma)}[kind]
    # t = 0, 10 are clipped at gamma, t = 500, 999 are not: both sides of the min are checked
    assert (snr[:2] > gamma).all() and (snr[2:] < gamma).all()
    torch.testing.assert_close(weighted / plain, torch.from_numpy(expected).float(), rtol=1e-5, atol=0)


def test_min_snr_with_zero_terminal_snr_stays_finite(make_diffusion, batch):
    x0, noise, _ = batch
    t = torch.tensor([999, 999, 0, 500])
    zero = lambda x, t: torch.zeros_like(x)  # noqa: E731
    loss = make_diffusion(ZERO_TERMINAL_SNR=True, MIN_SNR_GAMMA=5.0).loss(x0, t, zero, noise=noise)
    assert torch.isfinite(loss).all() and loss[0] > 0


def test_noise_offset_and_input_perturbation(make_diffusion, batch):
    x0, noise, t = batch
    oracle = _oracle(make_diffusion(), x0)
    assert make_diffusion().loss(x0, t, oracle, noise=noise).max() < 1e-6
    # offset noise is part of the target: the oracle still reads it back exactly ...
    assert make_diffusion(NOISE_OFFSET=0.5).loss(x0, t, oracle, noise=noise).max() < 1e-4
    # ... and offsets each channel by a constant: the input moves away from the plain x_t
    inputs = []
    make_diffusion(NOISE_OFFSET=3.0).loss(x0, t, lambda xt, t: inputs.append(xt) or torch.zeros_like(xt),
                                          noise=noise)
    shift = (inputs[0] - make_diffusion().diffuse(x0, t, noise))[2]
    torch.testing.assert_close(shift, shift[:, :1, :1].expand_as(shift))
    assert shift.abs().mean() > 0.05
    # input perturbation only reaches the network input: the target stays the clean noise
    perturbed = make_diffusion(INPUT_PERTURBATION=0.1).loss(x0, t, oracle, noise=noise)
    assert 0.005 < perturbed.mean() < 0.02  # ~ 0.1^2


def test_training_loss_decreases_on_a_toy_problem(make_diffusion):
    """A tiny MLP learns to denoise 2-D points from two clusters."""
    torch.manual_seed(0)
    diffusion = make_diffusion(PREDICTION_TYPE='v', MIN_SNR_GAMMA=5.0)
    net = nn.Sequential(nn.Linear(3, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 2))
    model = lambda xt, t: net(torch.cat([xt, t.float()[:, None] / 1000], dim=1))  # noqa: E731
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)

    def data(n, g=None):
        centers = torch.tensor([[1.0, 1.0], [-1.0, -0.5]])
        return centers[torch.randint(0, 2, (n,), generator=g)] + 0.1 * torch.randn(n, 2, generator=g)

    g = torch.Generator().manual_seed(1)
    x_eval, t_eval, n_eval = data(512, g), torch.randint(0, 1000, (512,), generator=g), torch.randn(512, 2, generator=g)
    evaluate = lambda: diffusion.loss(x_eval, t_eval, model, noise=n_eval, reduction='mean').item()  # noqa: E731
    before = evaluate()
    for _ in range(300):
        x0 = data(128)
        loss = diffusion.loss(x0, torch.randint(0, 1000, (128,)), model).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = evaluate()
    assert after < 0.5 * before, (before, after)


def test_unshifted_timesteps_are_the_uniform_draw_as_before():
    diffusion = DIFFUSIONS.build({'NAME': 'GaussianDiffusion'})
    torch.manual_seed(3)
    ours = diffusion.sample_t(1000)
    torch.manual_seed(3)
    assert torch.equal(ours, torch.randint(0, 1000, (1000,)))  # same random stream: old runs resume


@pytest.mark.parametrize('shift', [0.5, 1.5, 3.0])
def test_shifted_timesteps_follow_the_shifted_density(shift):
    T, n = 1000, 200_000
    diffusion = DIFFUSIONS.build({'NAME': 'GaussianDiffusion', 'TIMESTEPS': T, 'TIMESTEP_SHIFT': shift})
    torch.manual_seed(0)
    t = diffusion.sample_t(n)
    assert t.dtype == torch.long and int(t.min()) >= 0 and int(t.max()) <= T - 1
    # t <= k  <=>  shift(u) < (k + 1) / T  <=>  u < x / (shift - (shift - 1) x) with x = (k + 1) / T
    k = np.array([99, 249, 499, 749, 899])
    x = (k + 1) / T
    expected = x / (shift - (shift - 1) * x)
    measured = np.array([(t <= int(kk)).double().mean().item() for kk in k])
    np.testing.assert_allclose(measured, expected, atol=0.005)  # ~4.5 standard errors at n = 200k
    assert (float(t.double().median()) > T / 2) == (shift > 1)


@pytest.mark.parametrize('bad', [0, -1.0])
def test_timestep_shift_must_be_positive(bad):
    with pytest.raises(ConfigError, match='TIMESTEP_SHIFT'):
        DIFFUSIONS.build({'NAME': 'GaussianDiffusion', 'TIMESTEP_SHIFT': bad})


def test_the_default_example_trains_on_shifted_timesteps():
    from pathlib import Path

    from scepter_core.config import Config
    from scepter_core.registry import MODELS
    recipe = Path(__file__).resolve().parents[2] / 'examples' / 'tiny_shapes.yaml'
    cfg = Config.load(str(recipe), ['SOLVER.MODEL.FIRST_STAGE_MODEL.PRETRAINED_MODEL=null'])
    model = MODELS.build(cfg.SOLVER.MODEL)  # the DIFFUSION block reaches LatentDiffusion's diffusion
    assert model.diffusion.cfg.TIMESTEP_SHIFT == 5.0
    torch.manual_seed(0)
    assert float(model.diffusion.sample_t(20_000).double().median()) > 800  # shift 5: median 1000 * 5/6

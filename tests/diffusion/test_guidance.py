"""Classifier-free guidance, rescale, x0 constraints, intermediates and img2img."""
from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler
from torch import nn

from scepter_core.diffusion import concat_kwargs, guided_model, rescale_guidance, threshold_x0
from scepter_core.errors import ConfigError


class TinyCondNet(nn.Module):
    """A conv net whose output depends on a dict-valued condition; counts its calls."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.embed = nn.Linear(5, 3)
        self.calls: list[int] = []

    def forward(self, x, t, cond):
        self.calls.append(x.shape[0])
        c = self.embed(cond['text'].mean(1)) * cond['gain']
        return torch.tanh(self.conv(x)) + c[:, :, None, None] + 1e-3 * t.view(-1, 1, 1, 1)


@pytest.fixture
def net():
    return TinyCondNet().eval()


@pytest.fixture
def conds():
    g = torch.Generator().manual_seed(1)
    cond = {'cond': {'text': torch.randn(2, 4, 5, generator=g), 'gain': 1.5}}
    uncond = {'cond': {'text': torch.zeros(2, 4, 5), 'gain': 1.5}}
    return cond, uncond


@pytest.fixture
def noise():
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))


def test_guide_scale_one_is_conditional_only_with_one_call_per_step(make_diffusion, net, conds, noise):
    diffusion = make_diffusion()
    cond, uncond = conds
    guided = diffusion.sample(noise, net, model_kwargs=[cond, uncond], solver='euler', steps=8, guide_scale=1.0)
    assert net.calls == [2] * 8  # one unbatched call per step: no unconditional pass
    plain = diffusion.sample(noise, net, model_kwargs=cond, solver='euler', steps=8)
    torch.testing.assert_close(guided, plain, rtol=0, atol=0)
    none_scale = diffusion.sample(noise, net, model_kwargs=[cond, uncond], solver='euler', steps=8)
    torch.testing.assert_close(none_scale, plain, rtol=0, atol=0)


def test_batched_cfg_equals_two_separate_calls(make_diffusion, net, conds, noise):
    diffusion = make_diffusion()
    cond, uncond = conds
    got = diffusion.sample(noise, net, model_kwargs=[cond, uncond], solver='dpmpp_2m', steps=8, guide_scale=7.5)
    assert net.calls == [4] * 8  # one batched call per step

    def two_calls(x, t):
        y, u = net(x, t, **cond), net(x, t, **uncond)
        return u + 7.5 * (y - u)

    ref = diffusion.sample(noise, two_calls, solver='dpmpp_2m', steps=8)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_rescale_zero_is_plain_cfg_and_rescale_follows_its_formula(make_diffusion, net, conds, noise):
    diffusion = make_diffusion()
    cond, uncond = conds
    run = lambda r: diffusion.sample(noise, net, model_kwargs=[cond, uncond], solver='ddim',  # noqa: E731
                                     steps=6, guide_scale=5.0, guide_rescale=r)
    torch.testing.assert_close(run(0.0), run(None), rtol=0, atol=0)
    assert not torch.allclose(run(0.7), run(0.0))
    x, t = torch.randn(2, 3, 8, 8), torch.full((2,), 500.0)
    with torch.no_grad():
        out = guided_model(net, [cond, uncond], 5.0, 0.7)(x, t)
        y, u = net(x, t, **cond), net(x, t, **uncond)
    cfg = u + 5.0 * (y - u)
    ratio = y.flatten(1).std(1) / cfg.flatten(1).std(1)
    torch.testing.assert_close(out, cfg * (0.7 * ratio.view(-1, 1, 1, 1) + 0.3), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(rescale_guidance(cfg, y, 1.0).flatten(1).std(1), y.flatten(1).std(1))


def test_concat_kwargs_handles_nested_values():
    a = {'cond': {'text': torch.ones(1, 2), 'gain': 2.0}, 'hints': [torch.zeros(1, 3)], 'mode': 'x'}
    b = {'cond': {'text': torch.zeros(1, 2), 'gain': 2.0}, 'hints': [torch.ones(1, 3)], 'mode': 'x'}
    out = concat_kwargs([a, b])
    assert out['cond']['text'].tolist() == [[1, 1], [0, 0]] and out['cond']['gain'] == 2.0
    assert out['hints'][0].shape == (2, 3) and out['mode'] == 'x'
    with pytest.raises(ConfigError, match='gain'):
        concat_kwargs([a, {**b, 'cond': {'text': torch.zeros(1, 2), 'gain': 3.0}}])
    with pytest.raises(ConfigError, match='model_kwargs'):
        guided_model(lambda x, t: x, [a, b, a], 2.0)


def test_clamp_and_dynamic_thresholding():
    x0 = torch.tensor([[-3.0, -0.5, 0.2, 2.0], [0.1, -0.2, 0.3, 0.4]])
    assert threshold_x0(x0, clamp=1.0).abs().max() == 1.0
    out = threshold_x0(x0, percentile=0.9)
    s = torch.quantile(x0[0].abs(), 0.9)  # > 1: clip to [-s, s] then divide by s
    torch.testing.assert_close(out[0], x0[0].clamp(-s, s) / s)
    torch.testing.assert_close(out[1], x0[1])  # quantile < 1: s is floored at 1
    with pytest.raises(ConfigError, match='percentile'):
        threshold_x0(x0, percentile=1.5)


def test_clamp_and_condition_fn_shape_the_prediction(make_diffusion, model_fn, noise):
    diffusion = make_diffusion(PREDICTION_TYPE='x0')
    big = lambda x, t: 5 * torch.ones_like(x)  # noqa: E731
    out = diffusion.sample(noise, big, solver='euler', steps=5, clamp=1.0)
    torch.testing.assert_close(out, torch.ones_like(out))
    seen = []

    def push_down(x0, sigma, x):
        with torch.enable_grad():  # a guidance gradient must be possible here
            z = x0.detach().requires_grad_()
            grad, = torch.autograd.grad((z ** 2).sum(), z)
        seen.append(float(sigma))
        return x0 - 0.1 * grad

    out = diffusion.sample(noise, big, solver='euler', steps=5, condition_fn=push_down)
    torch.testing.assert_close(out, torch.full_like(out, 4.0))
    assert len(seen) == 5 and seen == sorted(seen, reverse=True)


def test_intermediates_and_callback(make_diffusion, model_fn, noise, diffusers_sd15):
    diffusion = make_diffusion()
    for mode in ['x0', 'xt']:
        got = []
        out, inter = diffusion.sample(noise, model_fn, solver='euler', steps=6, return_intermediate=mode,
                                      intermediate_callback=got.append)
        assert len(inter) == 6 and len(got) == 6 and got[0] is inter[0]
        torch.testing.assert_close(inter[-1], out)  # the last step lands on x0 (sigma 0)
    # 'xt' is on the model's variance-preserving scale: DDIM's first x_prev (5 steps: a
    # whole stride, where diffusers' t - T // N is the next timestep)
    sched = DDIMScheduler(**diffusers_sd15, timestep_spacing='trailing', clip_sample=False, set_alpha_to_one=True)
    sched.set_timesteps(5)
    t = sched.timesteps[0]
    ref = sched.step(model_fn(noise, t.expand(len(noise))), t, noise).prev_sample
    _, xts = diffusion.sample(noise, model_fn, solver='ddim', steps=5, discretization='trailing',
                              return_intermediate='xt')
    torch.testing.assert_close(xts[0], ref, rtol=1e-4, atol=1e-5)
    assert diffusion.sample(noise, model_fn, steps=3).is_inference()
    with pytest.raises(ConfigError, match='return_intermediate'):
        diffusion.sample(noise, model_fn, steps=3, return_intermediate='x_0')


def test_img2img(make_diffusion, noise):
    diffusion = make_diffusion()
    ts = []

    def model(x, t):
        ts.append(float(t[0]))
        return 0.3 * x

    clean = torch.randn_like(noise)
    txt2img = diffusion.sample(noise, model, solver='ddim', steps=20)
    full = diffusion.sample(noise, model, solver='ddim', steps=20, x=clean, denoising_strength=1.0)
    torch.testing.assert_close(full, txt2img, rtol=0, atol=0)
    ts.clear()
    half = diffusion.sample(noise, model, solver='ddim', steps=20, x=clean, denoising_strength=0.5)
    grid = diffusion.sigma_grid(20, 'linspace', integer=True)
    assert len(ts) == 10 and ts[0] == pytest.approx(float(diffusion.sigma_to_t(grid[10])), abs=1e-3)
    # started from clean + sigma * noise: with an x0-predicting model that returns the clean
    # latent the result is exactly the clean latent
    keep = make_diffusion(PREDICTION_TYPE='x0')
    out = keep.sample(None, lambda x, t: clean, solver='euler', steps=20, x=clean, denoising_strength=0.3, seed=5)
    torch.testing.assert_close(out, clean)
    again = diffusion.sample(None, model, steps=20, x=clean, denoising_strength=0.5, seed=5)
    torch.testing.assert_close(again, diffusion.sample(None, model, steps=20, x=clean, denoising_strength=0.5,
                                                       seed=5))
    assert not torch.allclose(half, txt2img)
    with pytest.raises(ConfigError, match='denoising_strength'):
        diffusion.sample(noise, model, steps=20, x=clean, denoising_strength=0.0)


def test_show_progress_runs(make_diffusion, model_fn, noise, capsys):
    make_diffusion().sample(noise, model_fn, steps=3, show_progress=True)
    make_diffusion().sample(noise, model_fn, steps=3, show_progress=False)
    assert capsys.readouterr().out == ''

"""LatentDiffusionXL on tiny parts: the conditioner's 'vector' reaches the UNet as `y`, sizes come
from the batch (or the image size), an empty negative prompt conditions on zeros, and a
training step and sampling run."""
from __future__ import annotations

import copy
import logging

import pytest
import torch

from scepter_core.accel.switches import cast_frozen_modules
from scepter_core.registry import MODELS
from tiny_sd import TINY_VAE, cfg, randomize
from test_conditioner import BIGG, CLIP_L, PROMPTS, encoder_dirs, sdxl_embedders  # noqa: F401  (fixture)

OUT_DIM = 256
ADM = BIGG['projection_dim'] + 6 * OUT_DIM
UNET = {'NAME': 'DiffusionUNet', 'MODEL_CHANNELS': 32, 'CHANNEL_MULT': [1, 2], 'ATTENTION_RESOLUTIONS': [2],
        'NUM_HEAD_CHANNELS': 16, 'CONTEXT_DIM': CLIP_L['hidden_size'] + BIGG['hidden_size'], 'NUM_RES_BLOCKS': 1,
        'TRANSFORMER_DEPTH': [1, 2], 'USE_LINEAR_IN_TRANSFORMER': True, 'NUM_CLASSES': 'sequential',
        'ADM_IN_CHANNELS': ADM}


@pytest.fixture(scope='module')
def model(encoder_dirs):  # noqa: F811
    torch.manual_seed(0)
    m = MODELS.build({'NAME': 'LatentDiffusionXL', 'DIFFUSION_MODEL': UNET, 'FIRST_STAGE_MODEL': cfg(TINY_VAE),
                      'COND_STAGE_MODEL': {'NAME': 'GeneralConditioner', 'EMBEDDERS': sdxl_embedders(encoder_dirs)},
                      'IMAGE_SIZE': [32, 32], 'SIZE_FACTOR': 2})
    randomize(m.model, seed=3, std=0.05)  # zero-initialised output layers would hide every difference
    return m.eval()


def test_defaults_are_sdxl_s(model):
    assert model.cfg.SCALE_FACTOR == 0.13025 and float(model.scale_factor) == pytest.approx(0.13025)
    assert model.condition_keys() == ('original_size_as_tuple', 'crop_coords_top_left', 'target_size_as_tuple')


def test_vector_reaches_the_unet_as_y(model):
    seen = []
    hook = model.model.label_emb.register_forward_hook(lambda mod, args, out: seen.append(args[0]))
    try:
        cond = model.condition(PROMPTS, {}, (32, 48))
        with torch.no_grad():
            model.model(torch.randn(2, 4, 4, 6), torch.tensor([10, 500]), **model.model_inputs(cond))
    finally:
        hook.remove()
    assert torch.equal(seen[0], cond['vector'])
    # without sizes in the batch: original = target = the image size, crop 0, 0 (diffusers' default)
    explicit = model.condition(PROMPTS, {'original_size_as_tuple': [32, 48], 'crop_coords_top_left': [0, 0],
                                         'target_size_as_tuple': torch.tensor([[32, 48], [32, 48]])}, (1, 1))
    assert torch.equal(explicit['vector'], cond['vector'])


def test_empty_negative_prompt_is_zeros_per_row(model):
    cond = model.condition(PROMPTS, {}, (32, 32))
    uc = model.unconditional(['', 'blurry'], {}, (32, 32))
    p = BIGG['projection_dim']
    assert not uc['crossattn'][0].any() and not uc['vector'][0, :p].any()
    assert torch.equal(uc['vector'][:, p:], cond['vector'][:, p:])  # size features stay
    blurry = model.condition(['blurry'], {}, (32, 32))
    assert torch.allclose(uc['crossattn'][1], blurry['crossattn'][0], atol=1e-6)
    model.cfg.FORCE_ZEROS_FOR_EMPTY_PROMPT = False
    try:
        encoded = model.unconditional(['', ''], {}, (32, 32))
    finally:
        model.cfg.FORCE_ZEROS_FOR_EMPTY_PROMPT = True
    assert encoded['crossattn'].abs().sum() > 0


def test_training_step_uses_the_sizes_of_the_batch(model):
    model.train()
    try:
        image = torch.rand(2, 3, 32, 32) * 2 - 1
        sizes = {'original_size_as_tuple': torch.tensor([[64, 80], [32, 32]]),
                 'crop_coords_top_left': torch.tensor([[3, 0], [0, 0]]),
                 'target_size_as_tuple': torch.tensor([[32, 32], [32, 32]])}
        torch.manual_seed(1)
        out = model(image=image, prompt=PROMPTS, **sizes)
        out['loss'].backward()
        torch.manual_seed(1)
        other = model(image=image, prompt=PROMPTS)  # same noise and t, the image size as sizes
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()
    assert torch.isfinite(out['loss'])
    assert model.model.label_emb[0][0].weight.grad is None  # cleared
    assert out['loss'].item() != other['loss'].item()


def test_sampling_is_seeded_and_conditioned_on_size(model):
    kw = dict(sampler='ddim', sample_steps=3, guide_scale=4.0, seed=7, image_size=[32, 32])
    a = model.forward_test(prompt=PROMPTS, **kw)
    b = model.forward_test(prompt=PROMPTS, **kw)
    c = model.forward_test(prompt=PROMPTS, original_size_as_tuple=[512, 512], **kw)
    assert [o['image'].shape for o in a] == [(3, 32, 32)] * 2
    assert all(torch.equal(x['image'], y['image']) for x, y in zip(a, b))
    assert not torch.equal(a[0]['image'], c[0]['image'])



def test_amp_leaves_the_float32_vae_alone_and_encodes_under_bf16_autocast(model):
    amp = copy.deepcopy(model)
    amp.first_stage_model.requires_grad_(False)
    amp.cond_stage_model.requires_grad_(False)
    assert cast_frozen_modules(amp, torch.bfloat16, logging.getLogger('t')) == ['cond_stage_model']
    image = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):  # USE_AMP's training context
        got = amp.encode_first_stage(image, generator=torch.Generator().manual_seed(0))
    want = model.encode_first_stage(image, generator=torch.Generator().manual_seed(0))
    assert got.dtype == torch.float32 and torch.equal(got, want)  # FIRST_STAGE_FP32: float32 throughout

"""AutoencoderKL: SD1.5 size and names, parity with diffusers, Scepter key names, training,
micro-batching, posterior mode and tiled decoding."""
from __future__ import annotations

import logging

import pytest
import torch
from tiny_sd import TINY_VAE, assert_same_layout, build, cfg

from scepter_core.checkpoint import save_state_dict
from scepter_core.convert import diffusers_vae_config, vae_keymap
from scepter_core.registry import MODELS

# diffusers' own config.json of the SD1.5 VAE.
SD15_DIFFUSERS_VAE = {
    'act_fn': 'silu', 'block_out_channels': [128, 256, 512, 512], 'down_block_types': ['DownEncoderBlock2D'] * 4,
    'in_channels': 3, 'latent_channels': 4, 'layers_per_block': 2, 'norm_num_groups': 32, 'out_channels': 3,
    'sample_size': 512, 'up_block_types': ['UpDecoderBlock2D'] * 4,
}


def test_sd15_has_the_published_size_and_every_key_maps_to_diffusers_and_back():
    ours_sd = assert_same_layout('MODELS', {'NAME': 'AutoencoderKL'}, 'AutoencoderKL', SD15_DIFFUSERS_VAE,
                                 vae_keymap(), num_params=83_653_863)
    assert ours_sd['encoder.mid.attn_1.q.weight'].shape == (512, 512, 1, 1)  # 1x1 convs, as in LDM files
    assert {'quant_conv.weight', 'post_quant_conv.bias', 'encoder.down.1.block.0.nin_shortcut.weight',
            'decoder.up.3.upsample.conv.weight'} <= set(ours_sd)


def test_encode_and_decode_match_diffusers():
    from diffusers import AutoencoderKL
    ours = build('MODELS', TINY_VAE, seed=1)
    theirs = AutoencoderKL.from_config(diffusers_vae_config(TINY_VAE)).eval()
    theirs.load_state_dict(vae_keymap(TINY_VAE).to_theirs(ours.state_dict()), strict=True)
    g = torch.Generator().manual_seed(0)
    x, z = torch.randn(3, 3, 32, 32, generator=g), torch.randn(3, 4, 16, 16, generator=g)
    with torch.no_grad():
        post, ref = ours.encode_posterior(x), theirs.encode(x).latent_dist
        dec, ref_dec = ours.decode(z), theirs.decode(z).sample
    assert (post.mean - ref.mean).abs().max().item() < 1e-5
    assert (post.std - ref.std).abs().max().item() < 1e-5
    assert dec.abs().max() > 0.05 and (dec - ref_dec).abs().max().item() < 1e-5


def test_attention_hands_sdpa_unit_stride_channels_in_every_layout_and_cast(monkeypatch):
    # CUDA's memory-efficient SDPA kernel needs unit stride along the head dim; strided q/k/v
    # fall back to the math path, which holds the whole score matrix.
    from scepter_core.models.autoencoders import vae_blocks
    from scepter_core.accel.switches import cast_frozen_modules
    seen = []

    def spy(q, k, v):
        seen.append([t.stride(-1) for t in (q, k, v)])
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)
    monkeypatch.setattr(vae_blocks.AttnBlock, 'attention', staticmethod(spy))
    torch.manual_seed(0)
    block = vae_blocks.AttnBlock(64).eval()
    x = torch.randn(2, 64, 8, 8)
    with torch.no_grad():
        # The LDM formula with the 1x1 convolutions as modules.
        hn = block.norm(x)
        q, k, v = (m(hn).flatten(2).transpose(1, 2) for m in (block.q, block.k, block.v))
        att = torch.softmax(q @ k.transpose(1, 2) / 64 ** 0.5, -1) @ v
        want = x + block.proj_out(att.transpose(1, 2).reshape(2, 64, 8, 8))
        for layout in (torch.contiguous_format, torch.channels_last):
            got = block(x.contiguous(memory_format=layout))
            assert got.is_contiguous(memory_format=layout) and (got - want).abs().max() < 1e-5
        cast_frozen_modules(block.requires_grad_(False), torch.bfloat16, logging.getLogger('t'))
        got = block(x)  # fp32 in, bf16 weights, no autocast (USE_AMP's frozen VAE)
    assert got.dtype == torch.float32 and (got - want).abs().max() < 0.1
    assert seen == [[1, 1, 1]] * 3


def test_micro_batch_counts_full_size_images():
    vae = MODELS.build(cfg(TINY_VAE, BATCH_SIZE=4))
    assert vae.micro_batch(512 * 512) == 4 and vae.micro_batch(1024 * 1024) == 4  # Scepter's meaning
    assert vae.micro_batch(256 * 256) == 16 and vae.micro_batch(32 * 32) == 1024  # same pixels per call


def test_micro_batches_and_mode(monkeypatch):
    from scepter_core.models.autoencoders import autoencoder_kl
    monkeypatch.setattr(autoencoder_kl, 'FULL_SIZE_PIXELS', 16 * 16)  # 16 px images count as full size
    one = build('MODELS', cfg(TINY_VAE, BATCH_SIZE=1, USE_MODE=True), seed=2)
    many = MODELS.build(cfg(TINY_VAE, BATCH_SIZE=8, USE_MODE=True)).eval()
    many.load_state_dict(one.state_dict())
    x = torch.randn(3, 3, 16, 16)
    calls = []
    one.encoder.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    with torch.no_grad():
        assert torch.allclose(one.encode(x), many.encode(x), atol=1e-6)
        assert calls == [1, 1, 1]
        assert torch.equal(one.encode(x), one.encode_posterior(x).mean)  # USE_MODE: no sampling
        z = one.encode(x)
        assert torch.allclose(one.decode(z), many.decode(z), atol=1e-6)
    sampled = MODELS.build(cfg(TINY_VAE)).eval()
    sampled.load_state_dict(one.state_dict())
    with torch.no_grad():
        assert not torch.equal(sampled.encode(x), sampled.encode(x))


def test_tiled_decode_covers_the_image_and_equals_plain_decode_for_one_tile():
    plain = build('MODELS', TINY_VAE, seed=3)
    tiled = MODELS.build(cfg(TINY_VAE, TILE_SIZE=8)).eval()
    tiled.load_state_dict(plain.state_dict())
    z = torch.randn(1, 4, 20, 20)
    with torch.no_grad():
        full, pieces = plain.decode(z), tiled.decode(z)
        small = torch.randn(1, 4, 8, 8)
        assert torch.equal(tiled.decode(small), plain.decode(small))
    assert pieces.shape == full.shape == (1, 3, 40, 40)
    # tiles see less context near their borders, yet the image is the same picture
    assert torch.corrcoef(torch.stack([pieces.flatten(), full.flatten()]))[0, 1] > 0.9


def test_loads_ldm_and_scepter_key_names(tmp_path):
    source = build('MODELS', TINY_VAE, seed=4)
    sd = source.state_dict()
    ldm = {f'first_stage_model.{k}': v for k, v in sd.items()} | {'model.diffusion_model.out.2.bias': torch.zeros(4)}
    scepter = {k.replace('post_quant_conv', 'conv2').replace('quant_conv', 'conv1'): v for k, v in sd.items()}
    for name, tensors in (('ldm', ldm), ('scepter', scepter)):
        save_state_dict(tensors, tmp_path / f'{name}.safetensors')
        loaded = MODELS.build(cfg(TINY_VAE, PRETRAINED_MODEL=str(tmp_path / f'{name}.safetensors')))
        got = loaded.state_dict()
        assert all(torch.equal(got[k], v) for k, v in sd.items()), name
    assert 'encoder.down.0.block.0.conv1.weight' in sd  # resnet conv1/conv2 keep their names


@pytest.mark.parametrize('rec_loss', ['l1', 'l2'])
def test_trains_from_scratch(rec_loss):
    torch.manual_seed(0)
    vae = MODELS.build(cfg(TINY_VAE, REC_LOSS=rec_loss, KL_WEIGHT=1e-3)).train()
    ramp = torch.linspace(-1, 1, 16)
    image = torch.stack([torch.stack([ramp[:, None] * s + ramp[None, :] * (1 - s), ramp[None, :].expand(16, 16) * s,
                                      torch.full((16, 16), s - 0.5)]) for s in (0.1, 0.4, 0.7, 1.0)])
    opt = torch.optim.Adam(vae.parameters(), lr=2e-3)
    losses = []
    for _ in range(20):
        out = vae(image=image)
        opt.zero_grad()
        out['loss'].backward()
        opt.step()
        losses.append(out['loss'].item())
    assert set(out) == {'loss', 'rec_loss', 'kl_loss'} and out['kl_loss'] >= 0
    assert out['loss'].item() == pytest.approx((out['rec_loss'] + 1e-3 * out['kl_loss']).item(), rel=1e-5)
    assert losses[-1] < 0.5 * losses[0]
    results = vae.eval()(image=image)
    assert len(results) == 4 and results[0]['image'].shape == (3, 16, 16)
    assert 0.0 <= results[0]['image'].min() and results[0]['image'].max() <= 1.0

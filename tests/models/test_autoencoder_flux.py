"""The 16-channel VAE of FLUX / SD3 (AutoencoderKLFlux): no quant convs, parity with
diffusers' AutoencoderKL configured as FLUX's, the published size, scale and shift."""
from __future__ import annotations

import torch
from diffusers import AutoencoderKL
from tiny_sd import build

from scepter_core.convert import vae_keymap
from scepter_core.registry import MODELS

CODER = {'CH': 32, 'CH_MULT': [1, 2], 'NUM_RES_BLOCKS': 1, 'Z_CHANNELS': 16}
TINY = {'NAME': 'AutoencoderKLFlux', 'ENCODER': {'NAME': 'Encoder', **CODER}, 'DECODER': {'NAME': 'Decoder', **CODER}}


def test_published_size_without_quant_convs():
    block = {'NAME': 'AutoencoderKLFlux', 'ENCODER': {'NAME': 'Encoder', 'Z_CHANNELS': 16},
             'DECODER': {'NAME': 'Decoder', 'Z_CHANNELS': 16}}
    with torch.device('meta'):
        vae = MODELS.build(block)
    assert sum(p.numel() for p in vae.parameters()) == 83_819_683
    assert not any(k.startswith(('quant_conv', 'post_quant_conv')) for k in vae.state_dict())


def test_encode_and_decode_match_diffusers_flux_vae():
    ours = build('MODELS', TINY, seed=1)
    theirs = AutoencoderKL(block_out_channels=[32, 64], down_block_types=['DownEncoderBlock2D'] * 2,
                           up_block_types=['UpDecoderBlock2D'] * 2, layers_per_block=1, latent_channels=16,
                           use_quant_conv=False, use_post_quant_conv=False).eval()
    theirs.load_state_dict(vae_keymap(TINY).to_theirs(ours.state_dict()), strict=True)
    g = torch.Generator().manual_seed(0)
    x, z = torch.randn(2, 3, 16, 16, generator=g), torch.randn(2, 16, 8, 8, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode_posterior(x).mean, theirs.encode(x).latent_dist.mean,
                                   rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ours.decode(z), theirs.decode(z).sample, rtol=1e-4, atol=1e-5)


def test_latents_are_shifted_then_scaled_as_the_pipelines_do():
    vae = MODELS.build({**TINY, 'SCALE_FACTOR': 1.5305, 'SHIFT_FACTOR': 0.0609})
    z = torch.randn(1, 16, 4, 4)
    torch.testing.assert_close(vae.to_diffusion(z), (z - 0.0609) * 1.5305)
    torch.testing.assert_close(vae.from_diffusion(vae.to_diffusion(z)), z)

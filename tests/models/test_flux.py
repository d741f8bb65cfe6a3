"""The FLUX transformer against diffusers' FluxTransformer2DModel on the same random
weights (through the key table), and its exact size."""
from __future__ import annotations

import pytest
import torch
from diffusers import FluxTransformer2DModel

from scepter_core.convert.flux_map import flux_from_diffusers, flux_to_diffusers
from scepter_core.models.backbones.flux import Flux, pack, unpack
from scepter_core.registry import BACKBONES

TINY = dict(IN_CHANNELS=16, HIDDEN_SIZE=32, NUM_HEADS=2, AXES_DIM=[4, 6, 6], VEC_IN_DIM=24, CONTEXT_IN_DIM=20,
            DEPTH=2, DEPTH_SINGLE_BLOCKS=2, MLP_RATIO=4.0, THETA=10000)


def diffusers_twin(guidance: bool) -> FluxTransformer2DModel:
    torch.manual_seed(0)
    ref = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=2, num_single_layers=2,
                                 attention_head_dim=16, num_attention_heads=2, joint_attention_dim=20,
                                 pooled_projection_dim=24, guidance_embeds=guidance, axes_dims_rope=(4, 6, 6))
    with torch.no_grad():  # diffusers zero-initialises some outputs; random everywhere tests more
        for p in ref.parameters():
            p.normal_(0, 0.2)
    return ref.eval()


@pytest.mark.parametrize('guidance', [True, False])
def test_flux_equals_diffusers(guidance):
    ref = diffusers_twin(guidance)
    ours = Flux({**TINY, 'GUIDANCE_EMBED': guidance}).eval()
    ours.load_state_dict(flux_from_diffusers(ref.state_dict()), strict=True)
    g = torch.Generator().manual_seed(1)
    x, txt = torch.randn(2, 4, 6, 8, generator=g), torch.randn(2, 5, 20, generator=g)
    pooled, s = torch.randn(2, 24, generator=g), torch.tensor([0.8, 0.3])
    cond = {'crossattn': txt, 'y': pooled, 'guidance': torch.tensor([3.5, 3.5]) if guidance else None}
    with torch.no_grad():
        out = ours(x, s * 1000, cond)
        ids = torch.zeros(3, 4, 3)
        ids[..., 1], ids[..., 2] = torch.arange(3)[:, None], torch.arange(4)[None]
        expected = ref(hidden_states=pack(x), encoder_hidden_states=txt, pooled_projections=pooled, timestep=s,
                       img_ids=ids.reshape(-1, 3), txt_ids=torch.zeros(5, 3),
                       guidance=cond['guidance']).sample
    torch.testing.assert_close(out, unpack(expected, 6, 8), rtol=1e-4, atol=1e-5)


def test_key_table_round_trips_bit_exactly():
    ref = diffusers_twin(True)
    ours = flux_from_diffusers(ref.state_dict())
    back = flux_to_diffusers(ours)
    assert back.keys() == ref.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in ref.state_dict().items())
    model = Flux({**TINY, 'GUIDANCE_EMBED': True})
    assert set(ours) == set(model.state_dict())


def test_pack_is_the_inverse_of_unpack():
    x = torch.randn(2, 16, 8, 6)
    assert torch.equal(unpack(pack(x), 8, 6), x)
    assert pack(x).shape == (2, 12, 64)


@pytest.mark.parametrize('guidance,count', [(True, 11_901_408_320), (False, 11_891_178_560)])
def test_flux1_sizes_are_exact_on_the_meta_device(guidance, count):
    with torch.device('meta'):
        model = BACKBONES.build({'NAME': 'Flux', 'GUIDANCE_EMBED': guidance})
    assert sum(p.numel() for p in model.parameters()) == count


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = Flux({**TINY, 'GUIDANCE_EMBED': False}).train()
    ckpt = Flux({**TINY, 'GUIDANCE_EMBED': False, 'USE_GRAD_CHECKPOINT': True}).train()
    ckpt.load_state_dict(plain.state_dict())
    x, cond = torch.randn(1, 4, 4, 4), {'crossattn': torch.randn(1, 3, 20), 'y': torch.randn(1, 24)}
    grads = []
    for model in (plain, ckpt):
        model(x, torch.tensor([500.0]), cond).square().mean().backward()
        grads.append(model.img_in.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_bad_head_layout_is_named():
    with pytest.raises(Exception, match='AXES_DIM'):
        Flux({**TINY, 'AXES_DIM': [4, 4, 4]})

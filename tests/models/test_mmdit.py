"""SD3 / SD3.5 MMDiT against diffusers' SD3Transformer2DModel on the same random weights
(through the key table), and the published sizes."""
from __future__ import annotations

import pytest
import torch
from diffusers import SD3Transformer2DModel

from scepter_core.convert.mmdit_map import mmdit_from_diffusers, mmdit_to_diffusers
from scepter_core.models.backbones.mmdit import MMDiT
from scepter_core.registry import BACKBONES

VARIANTS = {'sd3': dict(qk=None, dual=()), 'sd35-large': dict(qk='rms', dual=()),
            'sd35-medium': dict(qk='rms', dual=(0,))}


def pair(variant: str) -> tuple[MMDiT, SD3Transformer2DModel]:
    qk, dual = VARIANTS[variant]['qk'], VARIANTS[variant]['dual']
    torch.manual_seed(0)
    ref = SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8,
                                num_attention_heads=2, joint_attention_dim=12, caption_projection_dim=16,
                                pooled_projection_dim=10, out_channels=4, pos_embed_max_size=12,
                                dual_attention_layers=dual, qk_norm='rms_norm' if qk else None)
    with torch.no_grad():  # random everywhere, incl. layers diffusers zero-initialises
        for p in ref.parameters():
            p.normal_(0, 0.2)
    ours = MMDiT({'IN_CHANNELS': 4, 'OUT_CHANNELS': 4, 'DEPTH': 2, 'HIDDEN_SIZE': 16, 'NUM_HEADS': 2,
                  'ADM_IN_CHANNELS': 10, 'CONTEXT_EMBEDDER_CONFIG': {'params': {'in_features': 12}},
                  'QK_NORM': qk, 'X_BLOCK_SELF_ATTN_LAYERS': list(dual), 'POS_EMBED_MAX_SIZE': 12,
                  'POS_EMBED_BASE_SIZE': 8})
    return ours.eval(), ref.eval()


@pytest.mark.parametrize('variant', list(VARIANTS))
def test_mmdit_equals_diffusers(variant):
    ours, ref = pair(variant)
    ours.load_state_dict(mmdit_from_diffusers(ref.state_dict()), strict=True)
    g = torch.Generator().manual_seed(1)
    x, txt, pooled = torch.randn(2, 4, 8, 6, generator=g), torch.randn(2, 5, 12, generator=g), torch.randn(2, 10, generator=g)
    t = torch.tensor([900.0, 120.0])
    with torch.no_grad():
        out = ours(x, t, {'crossattn': txt, 'y': pooled})
        expected = ref(hidden_states=x, encoder_hidden_states=txt, pooled_projections=pooled, timestep=t).sample
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


def test_fixed_positions_equal_diffusers_sincos_grid():
    ours, ref = pair('sd3')
    torch.testing.assert_close(ours.pos_embed, ref.pos_embed.pos_embed)


def test_key_table_round_trips_bit_exactly():
    ours, ref = pair('sd35-medium')
    theirs = ref.state_dict()
    converted = mmdit_from_diffusers(theirs)
    assert set(converted) == set(ours.state_dict())
    back = mmdit_to_diffusers(converted)
    assert back.keys() == theirs.keys() and all(torch.equal(back[k], v) for k, v in theirs.items())


@pytest.mark.parametrize('block,count', [
    ({'DEPTH': 38, 'QK_NORM': 'rms'}, 8_056_627_520),
    ({'DEPTH': 24, 'QK_NORM': 'rms', 'X_BLOCK_SELF_ATTN_LAYERS': list(range(13)), 'POS_EMBED_MAX_SIZE': 384},
     2_243_171_520)])
def test_sd35_sizes_are_exact_on_the_meta_device(block, count):
    with torch.device('meta'):
        model = BACKBONES.build({'NAME': 'MMDiT', **block})
    assert sum(p.numel() for p in model.parameters()) == count


def test_scepter_recipe_keys_are_accepted_and_only_linear_context():
    block = {'NAME': 'MMDiT', 'IN_CHANNELS': 16, 'PATCH_SIZE': 2, 'OUT_CHANNELS': 16, 'DEPTH': 2, 'INPUT_SIZE': None,
             'ADM_IN_CHANNELS': 2048, 'NUM_PATCHES': 36864, 'POS_EMBED_MAX_SIZE': 8, 'POS_EMBED_SCALING_FACTOR': None,
             'USE_CHECKPOINT': True, 'IGNORE_KEYS': '^first_stage_model.',
             'CONTEXT_EMBEDDER_CONFIG': {'target': 'torch.nn.Linear', 'params': {'in_features': 64, 'out_features': 128}}}
    assert BACKBONES.build(block).context_embedder.in_features == 64
    with pytest.raises(Exception, match='target'):
        BACKBONES.build({**block, 'CONTEXT_EMBEDDER_CONFIG': {'target': 'os.system', 'params': {}}})

"""The UNet of every family: SD2.x and SDXL (base and refiner) at their published sizes, from
Scepter's recipe blocks and from diffusers' published config.json files; SDXL's vector
conditioning and levels without attention against diffusers on shared tiny weights."""
from __future__ import annotations


import pytest
import torch
import yaml
from tiny_sd import assert_same_layout, build

from fixtures import SCEPTER_RECIPES as RECIPES

from scepter_core.convert import diffusers_unet_config, unet_cfg_from_diffusers, unet_keymap
from scepter_core.models.backbones.unet_blocks import TimestepEmbedding
from scepter_core.registry import BACKBONES

_COMMON = {'act_fn': 'silu', 'center_input_sample': False, 'flip_sin_to_cos': True, 'freq_shift': 0,
           'in_channels': 4, 'out_channels': 4, 'layers_per_block': 2, 'norm_eps': 1e-05, 'norm_num_groups': 32,
           'downsample_padding': 1, 'mid_block_scale_factor': 1, 'use_linear_projection': True}
# diffusers' published unet/config.json files (the fields that shape the network).
SD21_DIFFUSERS_UNET = {
    **_COMMON, 'attention_head_dim': [5, 10, 20, 20], 'block_out_channels': [320, 640, 1280, 1280],
    'cross_attention_dim': 1024, 'sample_size': 96, 'upcast_attention': True,
    'down_block_types': ['CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'DownBlock2D'],
    'up_block_types': ['UpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D']}
SDXL_DIFFUSERS_UNET = {
    **_COMMON, 'addition_embed_type': 'text_time', 'addition_time_embed_dim': 256,
    'attention_head_dim': [5, 10, 20], 'block_out_channels': [320, 640, 1280], 'cross_attention_dim': 2048,
    'down_block_types': ['DownBlock2D', 'CrossAttnDownBlock2D', 'CrossAttnDownBlock2D'],
    'up_block_types': ['CrossAttnUpBlock2D', 'CrossAttnUpBlock2D', 'UpBlock2D'],
    'projection_class_embeddings_input_dim': 2816, 'sample_size': 128, 'transformer_layers_per_block': [1, 2, 10],
    'upcast_attention': None}
REFINER_DIFFUSERS_UNET = {
    **_COMMON, 'addition_embed_type': 'text_time', 'addition_time_embed_dim': 256,
    'attention_head_dim': [6, 12, 24, 24], 'block_out_channels': [384, 768, 1536, 1536], 'cross_attention_dim': 1280,
    'down_block_types': ['DownBlock2D', 'CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'DownBlock2D'],
    'up_block_types': ['UpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D', 'UpBlock2D'],
    'projection_class_embeddings_input_dim': 2560, 'sample_size': 128, 'transformer_layers_per_block': 4}
COUNTS = {'sd21': 865_910_724, 'sdxl': 2_567_463_684, 'sdxl-refiner': 2_259_526_660}


def _count(block: dict) -> int:
    with torch.device('meta'):
        return sum(p.numel() for p in BACKBONES.build(block).parameters())


def _recipe_block(name: str, *path: str) -> dict:
    node = yaml.safe_load((RECIPES / name).read_text())['SOLVER']['MODEL']
    for key in path:
        node = node[key]
    return node


def test_scepter_recipe_blocks_build_at_the_published_sizes():
    """The UNet blocks of Scepter's SD2.1 and SDXL recipes, unchanged (Scepter's own keys:
    NUM_HEADS -1, NUM_HEADS_CHANNELS, USE_NEW_ATTENTION_ORDER, per-level CONTEXT_DIM...)."""
    assert _count(_recipe_block('stable_diffusion_2.1_768.yaml', 'DIFFUSION_MODEL')) == COUNTS['sd21']
    assert _count(_recipe_block('stable_diffusion_2.1_512.yaml', 'DIFFUSION_MODEL')) == COUNTS['sd21']
    assert _count(_recipe_block('stable_diffusion_xl_1024.yaml', 'DIFFUSION_MODEL')) == COUNTS['sdxl']
    refiner = _recipe_block('stable_diffusion_xl_1024.yaml', 'COND_STAGE_MODEL', 'REFINER_MODEL')
    assert _count(refiner) == COUNTS['sdxl-refiner']
    assert _count({'NAME': 'DiffusionUNetXL'}) == COUNTS['sdxl']  # its defaults are SDXL base's
    assert _count({'NAME': 'DiffusionUNet'}) == 859_520_964


@pytest.mark.parametrize('family, published', [('sd21', SD21_DIFFUSERS_UNET), ('sdxl', SDXL_DIFFUSERS_UNET),
                                               ('sdxl-refiner', REFINER_DIFFUSERS_UNET)])
def test_published_diffusers_configs_give_the_same_network(family, published):
    """Read from diffusers' config.json, our UNet has the published count and every tensor maps
    onto diffusers' UNet2DConditionModel by name and shape, both ways (meta device)."""
    block = unet_cfg_from_diffusers(published)
    assert_same_layout('BACKBONES', block, 'UNet2DConditionModel', published, unet_keymap(block), COUNTS[family])
    again = diffusers_unet_config(block)  # and back: the fields that shape the network
    for key in ('block_out_channels', 'down_block_types', 'up_block_types', 'cross_attention_dim'):
        assert again[key] == published[key], key
    assert again.get('projection_class_embeddings_input_dim') == published.get('projection_class_embeddings_input_dim')
    assert again['upcast_attention'] == bool(published.get('upcast_attention'))


TINY_XL = {'NAME': 'DiffusionUNetXL', 'MODEL_CHANNELS': 32, 'CHANNEL_MULT': [1, 2, 2], 'ATTENTION_RESOLUTIONS': [2, 4],
           'TRANSFORMER_DEPTH': [0, 1, 2], 'NUM_HEADS_CHANNELS': 16, 'CONTEXT_DIM': 24, 'NUM_RES_BLOCKS': 1,
           'ADM_IN_CHANNELS': 20 + 6 * 8}


def test_sdxl_vector_conditioning_matches_diffusers_text_time():
    """y = [pooled text | sinusoidal embedding of each of the six size numbers] into label_emb
    is diffusers' add_embedding(text_embeds, add_time_proj(time_ids)); the first level has no
    attention (depth 0) and the middle block takes the last level's depth."""
    from diffusers import UNet2DConditionModel
    ours = build('BACKBONES', TINY_XL, seed=4)
    assert not any('input_blocks.1.1' in k for k in ours.state_dict())
    assert len(ours.middle_block[1].transformer_blocks) == 2
    theirs = UNet2DConditionModel.from_config(diffusers_unet_config(TINY_XL, time_embed_dim=8)).eval()
    theirs.load_state_dict(unet_keymap(TINY_XL).to_theirs(ours.state_dict()), strict=True)
    g = torch.Generator().manual_seed(0)
    x, ctx, pooled = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 5, 24, generator=g), torch.randn(2, 20)
    time_ids = torch.tensor([[64.0, 48.0, 0.0, 8.0, 64.0, 64.0], [32.0, 32.0, 4.0, 0.0, 32.0, 32.0]])
    sizes = TimestepEmbedding(8)(time_ids.reshape(-1), 12, x.device).reshape(2, -1)
    t = torch.tensor([5.0, 700.0])
    with torch.no_grad():
        a = ours(x, t, {'crossattn': ctx, 'vector': torch.cat([pooled, sizes], 1)})
        b = theirs(x, t, ctx, added_cond_kwargs={'text_embeds': pooled, 'time_ids': time_ids}).sample
        other = ours(x, t, {'crossattn': ctx, 'y': torch.cat([pooled, sizes.flip(0)], 1)})
    assert (a - other).abs().max() > 1e-3  # the size embedding reaches the output
    assert (a - b).abs().max().item() < 1e-5


def test_upcast_attention_keeps_half_precision_outputs():
    block = {**TINY_XL, 'UPCAST_ATTENTION': True}
    unet = build('BACKBONES', block, seed=1)
    assert all(blk.attn1.upcast for blk in unet.middle_block[1].transformer_blocks)
    x, ctx, y = torch.randn(1, 4, 8, 8), torch.randn(1, 5, 24), torch.randn(1, 68)
    with torch.no_grad():
        ref = unet(x, torch.tensor([10.0]), {'crossattn': ctx, 'y': y})
        half = unet.to(torch.bfloat16)(x.bfloat16(), torch.tensor([10.0]), {'crossattn': ctx.bfloat16(),
                                                                             'y': y.bfloat16()})
    assert half.dtype == torch.bfloat16
    # bf16 weights and activations: ~3 significant digits through a dozen layers
    assert (half.float() - ref).abs().max() < 0.05 * ref.abs().max()

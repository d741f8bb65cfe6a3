"""SDXL's conditioning (GeneralConditioner over FrozenCLIPEmbedder, FrozenOpenCLIPEmbedder2 and
ConcatTimestepEmbedderND) against diffusers' StableDiffusionXLPipeline.encode_prompt and the
UNet's add_time_proj, on the same tiny text encoders; SD2's FrozenOpenCLIPEmbedder against
transformers."""
from __future__ import annotations

import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from scepter_core.errors import ConfigError, ScepterError
from scepter_core.models.tokenizers.clip_tokenizer import PACKAGED_VOCAB
from scepter_core.registry import EMBEDDERS, TOKENIZERS

# Vocabulary-sized embeddings (the real BPE ids), everything else tiny. Two heads of 16 and 24.
CLIP_L = {'hidden_size': 32, 'intermediate_size': 64, 'num_hidden_layers': 3, 'num_attention_heads': 2,
          'hidden_act': 'quick_gelu'}
BIGG = {'hidden_size': 48, 'intermediate_size': 96, 'num_hidden_layers': 3, 'num_attention_heads': 2,
        'hidden_act': 'gelu', 'projection_dim': 24}
PROMPTS = ['a photo of a cat', 'an astronaut riding a horse on the moon, highly detailed']
OUT_DIM = 256


def _randomized(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


@pytest.fixture(scope='module')
def encoder_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp('sdxl_text')
    _randomized(CLIPTextModel(CLIPTextConfig(**CLIP_L)), 1).save_pretrained(root / 'text_encoder')
    _randomized(CLIPTextModelWithProjection(CLIPTextConfig(**BIGG)), 2).save_pretrained(root / 'text_encoder_2')
    return root / 'text_encoder', root / 'text_encoder_2'


def sdxl_embedders(dirs, **extra) -> list[dict]:
    size = [{'NAME': 'ConcatTimestepEmbedderND', 'OUT_DIM': OUT_DIM, 'INPUT_KEYS': [key]}
            for key in ('original_size_as_tuple', 'crop_coords_top_left', 'target_size_as_tuple')]
    return [{'NAME': 'FrozenCLIPEmbedder', 'PRETRAINED_MODEL': str(dirs[0]), 'LAYER': 'hidden', 'LAYER_IDX': -2,
             'INPUT_KEYS': ['prompt'], **extra},
            {'NAME': 'FrozenOpenCLIPEmbedder2', 'PRETRAINED_MODEL': str(dirs[1]), 'LAYER': 'penultimate',
             'LEGACY': False, 'ALWAYS_RETURN_POOLED': True, 'INPUT_KEYS': ['prompt'], **extra}, *size]


def conditioner(dirs, **extra):
    return EMBEDDERS.build({'NAME': 'GeneralConditioner', 'EMBEDDERS': sdxl_embedders(dirs, **extra)})


@pytest.fixture(scope='module')
def diffusers_pipe(encoder_dirs):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    unet = UNet2DConditionModel(  # tiny, with SDXL's text_time addition embedding
        block_out_channels=(32, 64), down_block_types=('DownBlock2D', 'CrossAttnDownBlock2D'),
        up_block_types=('CrossAttnUpBlock2D', 'UpBlock2D'), layers_per_block=1, attention_head_dim=(2, 4),
        cross_attention_dim=CLIP_L['hidden_size'] + BIGG['hidden_size'], addition_embed_type='text_time',
        addition_time_embed_dim=OUT_DIM, projection_class_embeddings_input_dim=BIGG['projection_dim'] + 6 * OUT_DIM,
        use_linear_projection=True, sample_size=8)
    return StableDiffusionXLPipeline(
        vae=None, unet=unet, scheduler=EulerDiscreteScheduler(),
        text_encoder=CLIPTextModel.from_pretrained(encoder_dirs[0]).eval(),
        text_encoder_2=CLIPTextModelWithProjection.from_pretrained(encoder_dirs[1]).eval(),
        tokenizer=CLIPTokenizer.from_pretrained(PACKAGED_VOCAB),
        tokenizer_2=CLIPTokenizer.from_pretrained(PACKAGED_VOCAB, pad_token='!'))  # SDXL's tokenizer_2 pads with '!'


def add_time_proj(pipe, ids: torch.Tensor) -> torch.Tensor:
    """What diffusers' SDXL UNet embeds: `add_time_proj(time_ids.flatten()).reshape(B, -1)`."""
    return pipe.unet.add_time_proj(ids.flatten()).reshape(ids.shape[0], -1)


def test_sdxl_conditioner_equals_diffusers_encode_prompt(encoder_dirs, diffusers_pipe):
    cond = conditioner(encoder_dirs)
    batch = {'prompt': PROMPTS, 'original_size_as_tuple': torch.tensor([[1024, 768], [300, 512]]),
             'crop_coords_top_left': torch.tensor([[0, 0], [32, 16]]),
             'target_size_as_tuple': torch.tensor([[1024, 1024], [1024, 1024]])}
    with torch.no_grad():
        ours = cond(batch)
        embeds, neg, pooled, neg_pooled = diffusers_pipe.encode_prompt(
            PROMPTS, device='cpu', num_images_per_prompt=1, do_classifier_free_guidance=True, negative_prompt=None)
    assert set(ours) == {'crossattn', 'vector'}
    assert ours['crossattn'].shape == embeds.shape == (2, 77, 32 + 48)
    assert (ours['crossattn'] - embeds).abs().max() < 1e-5
    p = BIGG['projection_dim']
    assert ours['vector'].shape == (2, p + 3 * 2 * OUT_DIM)
    assert (ours['vector'][:, :p] - pooled).abs().max() < 1e-5
    ids = torch.cat([batch['original_size_as_tuple'], batch['crop_coords_top_left'],
                     batch['target_size_as_tuple']], dim=1).float()
    assert (ours['vector'][:, p:] - add_time_proj(diffusers_pipe, ids)).abs().max() < 1e-5
    # force_zeros_for_empty_prompt: diffusers' negative condition is zeros; ours with the
    # prompt embedders forced to zero gives the same, with the size features untouched.
    with torch.no_grad():
        zeroed = cond(batch, force_zero_embeddings=['prompt'])
    assert torch.equal(zeroed['crossattn'], neg) and torch.equal(zeroed['vector'][:, :p], neg_pooled)
    assert torch.equal(zeroed['vector'][:, p:], ours['vector'][:, p:])


def test_uniform_sizes_equal_diffusers_add_time_ids(encoder_dirs, diffusers_pipe):
    ids = diffusers_pipe._get_add_time_ids((896, 1152), (0, 0), (1024, 1024), dtype=torch.float32,
                                           text_encoder_projection_dim=BIGG['projection_dim'])
    emb = EMBEDDERS.build({'NAME': 'ConcatTimestepEmbedderND', 'OUT_DIM': OUT_DIM, 'INPUT_KEYS': ['x']})
    ours = torch.cat([emb(torch.tensor([[896, 1152]])), emb(torch.tensor([[0, 0]])),
                      emb(torch.tensor([[1024, 1024]]))], dim=1)
    assert (ours - add_time_proj(diffusers_pipe, ids)).abs().max() < 1e-5
    assert torch.equal(emb(torch.tensor([5.0, 7.0])), emb(torch.tensor([[5.0], [7.0]])))  # [B] is [B, 1]


def test_negative_prompt_equals_diffusers(encoder_dirs, diffusers_pipe):
    cond = conditioner(encoder_dirs)
    sizes = {k: torch.tensor([[64, 64]] * 2) for k in ('original_size_as_tuple', 'target_size_as_tuple')}
    with torch.no_grad():
        ours = cond({'prompt': ['blurry', 'ugly, low quality'], 'crop_coords_top_left': torch.zeros(2, 2), **sizes})
        _, neg, _, neg_pooled = diffusers_pipe.encode_prompt(
            PROMPTS, device='cpu', do_classifier_free_guidance=True, negative_prompt=['blurry', 'ugly, low quality'])
    assert (ours['crossattn'] - neg).abs().max() < 1e-5
    assert (ours['vector'][:, :BIGG['projection_dim']] - neg_pooled).abs().max() < 1e-5


def test_ucg_drops_conditions_only_when_asked(encoder_dirs):
    cond = conditioner(encoder_dirs, UCG_RATE=1.0)
    batch = {'prompt': PROMPTS, **{k: torch.tensor([[64, 64]] * 2) for k in
                                   ('original_size_as_tuple', 'crop_coords_top_left', 'target_size_as_tuple')}}
    with torch.no_grad():
        kept, dropped = cond(batch), cond(batch, drop=True)
    p = BIGG['projection_dim']
    assert kept['crossattn'].abs().sum() > 0
    assert not dropped['crossattn'].any() and not dropped['vector'][:, :p].any()
    assert torch.equal(dropped['vector'][:, p:], kept['vector'][:, p:])  # size embedders have rate 0
    # legacy UCG replaces the input (here the prompt) instead of zeroing the output
    legacy = conditioner(encoder_dirs, UCG_RATE=1.0, LEGACY_UCG_VALUE='')
    with torch.no_grad():
        replaced = legacy(batch, drop=True)
        empty = cond({**batch, 'prompt': ['', '']})
    assert torch.equal(replaced['crossattn'], empty['crossattn'])


def test_conditioner_errors_name_the_key(encoder_dirs):
    cond = conditioner(encoder_dirs)
    with pytest.raises(ScepterError, match="reads 'crop_coords_top_left'"):
        cond({'prompt': PROMPTS, 'original_size_as_tuple': torch.ones(2, 2), 'target_size_as_tuple': torch.ones(2, 2)})
    with pytest.raises(ConfigError, match=r'EMBEDDERS\.0\.INPUT_KEYS'):
        EMBEDDERS.build({'NAME': 'GeneralConditioner', 'EMBEDDERS': [{'NAME': 'ConcatTimestepEmbedderND'}]})
    with pytest.raises(ConfigError, match='LEGACY'):
        EMBEDDERS.build({'NAME': 'FrozenOpenCLIPEmbedder2', 'CONFIG': BIGG, 'ALWAYS_RETURN_POOLED': True})


def test_is_trainable_unfreezes_and_use_grad_propagates(encoder_dirs):
    blocks = sdxl_embedders(encoder_dirs)
    blocks[0]['IS_TRAINABLE'] = True
    cond = EMBEDDERS.build({'NAME': 'GeneralConditioner', 'EMBEDDERS': blocks})
    assert all(p.requires_grad for p in cond.embedders[0].parameters())
    assert not any(p.requires_grad for p in cond.embedders[1].parameters())
    out = cond({'prompt': PROMPTS, **{k: torch.ones(2, 2) for k in cond.input_keys if k != 'prompt'}})
    out['crossattn'].sum().backward()
    assert cond.embedders[0].transformer.text_model.embeddings.token_embedding.weight.grad is not None
    grad = EMBEDDERS.build({'NAME': 'GeneralConditioner', 'USE_GRAD': True, 'EMBEDDERS': sdxl_embedders(encoder_dirs)})
    assert grad.embedders[1].use_grad and grad.input_keys == ['prompt', 'original_size_as_tuple',
                                                              'crop_coords_top_left', 'target_size_as_tuple']


def test_openclip_tokenizer_pads_with_zero_like_diffusers_tokenizer_2():
    ours = TOKENIZERS.build({'NAME': 'OpenClipTokenizer'})(PROMPTS + [''])
    theirs = CLIPTokenizer.from_pretrained(PACKAGED_VOCAB, pad_token='!')(
        PROMPTS + [''], padding='max_length', max_length=77, truncation=True, return_tensors='pt').input_ids
    assert torch.equal(ours, theirs)
    assert ours[2, 2:].eq(0).all() and ours[2, 1] == 49407


@pytest.mark.parametrize('stored_layers', [3, 2])
def test_sd2_penultimate_is_the_normed_next_to_last_block(tmp_path, stored_layers):
    """A full-depth tower loses its unused last block; diffusers' cut one (23 of 24) is used as it is."""
    cfg = {**BIGG, 'projection_dim': 512}
    full = _randomized(CLIPTextModel(CLIPTextConfig(**cfg)), 3)
    ref_tokens = TOKENIZERS.build({'NAME': 'OpenClipTokenizer'})(PROMPTS)
    with torch.no_grad():
        out = full(input_ids=ref_tokens, output_hidden_states=True)
        want = full.final_layer_norm(out.hidden_states[-2])
    if stored_layers == 2:
        full.encoder.layers = full.encoder.layers[:2]
        full.config.num_hidden_layers = 2
    full.save_pretrained(tmp_path / 'te')
    emb = EMBEDDERS.build({'NAME': 'FrozenOpenCLIPEmbedder', 'PRETRAINED_MODEL': str(tmp_path / 'te'),
                           'CONFIG': {'num_hidden_layers': 3}, 'LAYER': 'penultimate'})
    assert emb.depth == 2
    assert (emb.encode(PROMPTS) - want).abs().max() < 1e-5
    with pytest.raises(ConfigError, match='blocks'):
        EMBEDDERS.build({'NAME': 'FrozenOpenCLIPEmbedder', 'PRETRAINED_MODEL': str(tmp_path / 'te'),
                         'CONFIG': {'num_hidden_layers': 5}, 'LAYER': 'penultimate'})


def test_bigg_and_vit_h_sizes_are_openclip_s():
    with torch.device('meta'):
        bigg = EMBEDDERS.build({'NAME': 'FrozenOpenCLIPEmbedder2'})
        vit_h = EMBEDDERS.build({'NAME': 'FrozenOpenCLIPEmbedder', 'LAYER': 'penultimate'})
    assert sum(p.numel() for p in bigg.parameters()) == 694_659_840  # text tower + projection
    assert sum(p.numel() for p in vit_h.parameters()) == 340_387_840  # diffusers' SD2 text_encoder (23 blocks)
    assert 'transformer.text_projection.weight' in bigg.state_dict()
    assert 'transformer.text_model.encoder.layers.22.mlp.fc2.weight' in vit_h.state_dict()

"""Key tables of SD2 and SDXL: original single files (LDM / SGM: OpenCLIP towers with fused
q/k/v, SDXL's conditioner) <-> ours <-> diffusers, bit-exact both ways on tiny random
weights; the OpenCLIP table computes what an OpenCLIP text tower computes."""
from __future__ import annotations

import pytest
import torch
from models.tiny_sd import TINY_VAE, build, randomize

from scepter_core.convert import diffusers_to_ours, ldm_to_ours, ours_to_diffusers, ours_to_ldm
from scepter_core.convert.configs import diffusers_unet_config, diffusers_vae_config
from scepter_core.convert.openclip_map import hf_to_openclip, openclip_text_config, openclip_to_hf

TINY_XL_UNET = {'NAME': 'DiffusionUNetXL', 'MODEL_CHANNELS': 32, 'CHANNEL_MULT': [1, 2], 'ATTENTION_RESOLUTIONS': [2],
                'TRANSFORMER_DEPTH': [0, 2], 'NUM_HEADS_CHANNELS': 16, 'CONTEXT_DIM': 56, 'NUM_RES_BLOCKS': 1,
                'ADM_IN_CHANNELS': 24 + 6 * 8}
CLIP_L = {'vocab_size': 99, 'hidden_size': 32, 'intermediate_size': 48, 'num_hidden_layers': 2,
          'num_attention_heads': 2, 'max_position_embeddings': 12, 'hidden_act': 'quick_gelu'}
BIG_G = {'vocab_size': 99, 'hidden_size': 24, 'intermediate_size': 40, 'num_hidden_layers': 3,
         'num_attention_heads': 2, 'max_position_embeddings': 12, 'hidden_act': 'gelu', 'projection_dim': 24}


def _text(config: dict, projection: bool, seed: int) -> dict[str, torch.Tensor]:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    sd = randomize(cls(CLIPTextConfig(**config)), seed).state_dict()
    return {k if k.startswith(('text_model.', 'text_projection')) else f'text_model.{k}': v for k, v in sd.items()}


@pytest.fixture(scope='module')
def sdxl_state() -> dict[str, torch.Tensor]:
    """A tiny SDXL base in our names: UNet, VAE, CLIP-L and bigG (with projection) encoders."""
    sd = {f'model.{k}': v for k, v in build('BACKBONES', TINY_XL_UNET, 1).state_dict().items()}
    sd.update({f'first_stage_model.{k}': v for k, v in build('MODELS', TINY_VAE, 2).state_dict().items()})
    sd.update({f'cond_stage_model.embedders.0.transformer.{k}': v for k, v in _text(CLIP_L, False, 3).items()})
    sd.update({f'cond_stage_model.embedders.1.transformer.{k}': v for k, v in _text(BIG_G, True, 4).items()})
    return sd


def _assert_same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sdxl_single_file_names_and_round_trip(sdxl_state):
    sgm = ours_to_ldm(sdxl_state)
    assert 'model.diffusion_model.label_emb.0.0.weight' in sgm
    assert 'conditioner.embedders.0.transformer.text_model.encoder.layers.1.mlp.fc1.weight' in sgm
    assert sgm['conditioner.embedders.1.model.transformer.resblocks.2.attn.in_proj_weight'].shape == (72, 24)
    assert sgm['conditioner.embedders.1.model.text_projection'].shape == (24, 24)
    assert sgm['conditioner.embedders.1.model.positional_embedding'].shape == (12, 24)
    assert not any(k.startswith('cond_stage_model.') for k in sgm)
    _assert_same(ldm_to_ours(sgm), sdxl_state)


def test_sdxl_refiner_single_file_has_bigg_first(sdxl_state):
    """The refiner's conditioner holds bigG alone, as embedder 0 (`conditioner.embedders.0.model.*`)."""
    refiner = {k.replace('embedders.1.', 'embedders.0.'): v for k, v in sdxl_state.items()
               if not k.startswith('cond_stage_model.embedders.0.')}
    sgm = ours_to_ldm(refiner)
    assert 'conditioner.embedders.0.model.ln_final.weight' in sgm
    _assert_same(ldm_to_ours(sgm), refiner)
    assert sorted(ours_to_diffusers(refiner, TINY_XL_UNET, TINY_VAE)) == ['text_encoder_2', 'unet', 'vae']


def test_sdxl_diffusers_round_trip_loads_in_diffusers_and_transformers(sdxl_state):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
    parts = ours_to_diffusers(sdxl_state, TINY_XL_UNET, TINY_VAE)
    assert sorted(parts) == ['text_encoder', 'text_encoder_2', 'unet', 'vae']
    configs = {'unet': diffusers_unet_config(TINY_XL_UNET, time_embed_dim=8), 'vae': diffusers_vae_config(TINY_VAE)}
    UNet2DConditionModel.from_config(configs['unet']).load_state_dict(parts['unet'], strict=True)
    AutoencoderKL.from_config(configs['vae']).load_state_dict(parts['vae'], strict=True)
    clip_l = CLIPTextModel(CLIPTextConfig(**CLIP_L))
    flat = not any(k.startswith('text_model.') for k in clip_l.state_dict())  # transformers 5 drops the level
    clip_l.load_state_dict({k.removeprefix('text_model.') if flat else k: v for k, v in parts['text_encoder'].items()},
                           strict=True)
    CLIPTextModelWithProjection(CLIPTextConfig(**BIG_G)).load_state_dict(parts['text_encoder_2'], strict=True)
    _assert_same(diffusers_to_ours(parts, configs), sdxl_state)


def test_sd2_openclip_single_file_round_trip():
    """SD2's `cond_stage_model.model.*` (ViT-H layout) <-> ours `cond_stage_model.transformer.*`;
    logit_scale, which no text model holds, is the one tensor not carried."""
    ours = {f'cond_stage_model.transformer.{k}': v for k, v in _text(BIG_G, True, 5).items()}
    ldm = ours_to_ldm(ours, openclip=True)
    assert 'cond_stage_model.model.transformer.resblocks.0.attn.in_proj_bias' in ldm
    _assert_same(ldm_to_ours({**ldm, 'cond_stage_model.model.logit_scale': torch.tensor(4.6)}), ours)
    config = openclip_text_config({k[len('cond_stage_model.model.'):]: v for k, v in ldm.items()})
    assert {k: config[k] for k in BIG_G if k != 'num_attention_heads'} == \
        {k: v for k, v in BIG_G.items() if k != 'num_attention_heads'}
    assert config['num_attention_heads'] == 1  # not in the weights: width / 64, as in ViT-H and bigG


class _OpenCLIPText(torch.nn.Module):
    """OpenCLIP's text tower as its code computes it, on torch's own fused-projection attention:
    pre-norm residual blocks (ln_1, attn, ln_2, mlp c_fc/GELU/c_proj) under a causal mask,
    ln_final, and the end token's state times text_projection."""

    def __init__(self, c: dict):
        super().__init__()
        d = c['hidden_size']
        self.token_embedding = torch.nn.Embedding(c['vocab_size'], d)
        self.positional_embedding = torch.nn.Parameter(torch.randn(c['max_position_embeddings'], d))
        self.transformer = torch.nn.Module()
        self.transformer.resblocks = torch.nn.ModuleList()
        for _ in range(c['num_hidden_layers']):
            block = torch.nn.Module()
            block.ln_1, block.ln_2 = torch.nn.LayerNorm(d), torch.nn.LayerNorm(d)
            block.attn = torch.nn.MultiheadAttention(d, c['num_attention_heads'], batch_first=True)
            block.mlp = torch.nn.Module()
            block.mlp.c_fc, block.mlp.c_proj = torch.nn.Linear(d, c['intermediate_size']), \
                torch.nn.Linear(c['intermediate_size'], d)
            self.transformer.resblocks.append(block)
        self.ln_final = torch.nn.LayerNorm(d)
        self.text_projection = torch.nn.Parameter(torch.randn(d, c['projection_dim']))

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = ids.shape[1]
        mask = torch.full((n, n), float('-inf')).triu(1)
        x = self.token_embedding(ids) + self.positional_embedding[:n]
        states = []
        for b in self.transformer.resblocks:
            states.append(x)
            h = b.ln_1(x)
            x = x + b.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
            x = x + b.mlp.c_proj(torch.nn.functional.gelu(b.mlp.c_fc(b.ln_2(x))))
        pooled = self.ln_final(x)[torch.arange(len(ids)), ids.argmax(-1)] @ self.text_projection
        return states[-1], pooled  # the penultimate block's output, as SDXL reads it


def test_openclip_table_computes_what_openclip_computes():
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection
    ref = randomize(_OpenCLIPText(BIG_G), seed=7, std=0.2).eval()
    config = {**openclip_text_config(ref.state_dict()), 'num_attention_heads': 2, 'eos_token_id': 98}
    theirs = CLIPTextModelWithProjection(CLIPTextConfig(**config)).eval()
    theirs.load_state_dict(openclip_to_hf(ref.state_dict()), strict=True)
    ids = torch.tensor([[97, 5, 17, 42, 98, 0, 0, 0], [97, 3, 98, 0, 0, 0, 0, 0]])
    with torch.no_grad():
        want_hidden, want_pooled = ref(ids)
        out = theirs(input_ids=ids, output_hidden_states=True)
    torch.testing.assert_close(out.hidden_states[-2], want_hidden, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.text_embeds, want_pooled, atol=1e-5, rtol=1e-5)
    back = hf_to_openclip(theirs.state_dict())
    want = ref.state_dict()
    assert sorted(back) == sorted(want) and all(torch.equal(back[k], v) for k, v in want.items())


def test_scepter_convert_keeps_an_sd2_file_in_openclip_names(tmp_path):
    """ldm -> ldm (what --merge-lora and --use-ema runs do) on an SD2 file: the text encoder is
    written back as `cond_stage_model.model.*`, every tensor bit-exact."""
    import subprocess
    import sys

    from models.tiny_sd import tiny_pipeline_state
    from safetensors.torch import load_file

    from scepter_core.convert import save_ldm
    sd = {k: v for k, v in tiny_pipeline_state().items() if not k.startswith('cond_stage_model.')}
    sd.update({f'cond_stage_model.transformer.{k}': v for k, v in _text(BIG_G, True, 6).items()})
    src, dst = tmp_path / 'sd21.safetensors', tmp_path / 'again.safetensors'
    save_ldm(sd, src, openclip=True)
    subprocess.run([sys.executable, '-m', 'scepter_cli', 'convert', str(src), str(dst), '--to', 'ldm'],
                   check=True, capture_output=True, timeout=600)
    a, b = load_file(str(src)), load_file(str(dst))
    assert any(k.startswith('cond_stage_model.model.transformer.resblocks.') for k in b)
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)

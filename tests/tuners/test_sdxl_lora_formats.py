"""SDXL LoRA files: kohya's layout as sd-scripts writes it for SDXL (`lora_unet_` + SGM UNet
names, `lora_te1_` / `lora_te2_` for the two encoders, `.alpha`) and diffusers' (`unet.`,
`text_encoder.`, `text_encoder_2.`), on a tiny LatentDiffusionXL with adapters on the UNet and
both text encoders; kohya -> ours -> kohya keeps every tensor, both layouts read back the same."""
from __future__ import annotations

import copy

import pytest
import torch
from lora_helpers import TINY_MODEL, randomize_adapters
from safetensors.torch import load_file

from scepter_core.tuners import apply_tuners, export_kohya, export_peft_diffusers, import_kohya, import_peft_diffusers
from scepter_core.tuners import load_adapter, model_lora_state
from scepter_core.tuners.state import flatten

TEXT = {'vocab_size': 49408, 'hidden_size': 32, 'intermediate_size': 48, 'num_hidden_layers': 2,
        'num_attention_heads': 2, 'max_position_embeddings': 8}
LORA = [{'NAME': 'SwiftLoRA', 'R': 4, 'LORA_ALPHA': 8, 'TARGET_MODULES': 'model.*(to_q|to_k|to_v|to_out.0|net.2)$'},
        {'NAME': 'SwiftLoRA', 'R': 2, 'LORA_ALPHA': 3,
         'TARGET_MODULES': 'cond_stage_model.embedders.[01].*(q_proj|out_proj|mlp.fc1|text_projection)$'}]


def tiny_xl() -> dict:
    model = copy.deepcopy(TINY_MODEL)
    model.pop('TOKENIZER')
    model['NAME'] = 'LatentDiffusionXL'
    model['DIFFUSION_MODEL'].update({'NAME': 'DiffusionUNetXL', 'NUM_HEADS_CHANNELS': 16, 'CONTEXT_DIM': 64,
                                     'CHANNEL_MULT': [1, 2], 'ATTENTION_RESOLUTIONS': [2], 'TRANSFORMER_DEPTH': [0, 2],
                                     'ADM_IN_CHANNELS': 16 + 6 * 8})
    model['COND_STAGE_MODEL'] = {'NAME': 'GeneralConditioner', 'EMBEDDERS': [
        {'NAME': 'FrozenCLIPEmbedder', 'CONFIG': TEXT, 'MAX_LENGTH': 8, 'LAYER': 'hidden', 'LAYER_IDX': -2,
         'INPUT_KEYS': ['prompt']},
        {'NAME': 'FrozenOpenCLIPEmbedder2', 'CONFIG': {**TEXT, 'projection_dim': 16}, 'MAX_LENGTH': 8,
         'LAYER': 'penultimate', 'LEGACY': False, 'ALWAYS_RETURN_POOLED': True, 'INPUT_KEYS': ['prompt']},
        *[{'NAME': 'ConcatTimestepEmbedderND', 'OUT_DIM': 8, 'INPUT_KEYS': [k]}
          for k in ('original_size_as_tuple', 'crop_coords_top_left', 'target_size_as_tuple')]]}
    return model


@pytest.fixture(scope='module')
def base():
    from scepter_core.registry import MODELS
    torch.manual_seed(0)
    return MODELS.build(tiny_xl()).eval()


@pytest.fixture
def tuned(base):
    model = apply_tuners(copy.deepcopy(base), copy.deepcopy(LORA), None)
    randomize_adapters(model)
    return model


def test_kohya_names_are_sd_scripts_sdxl_names(tuned, tmp_path):
    keys = set(load_file(str(export_kohya(tuned, tmp_path / 'k.safetensors'))))
    assert 'lora_unet_input_blocks_3_1_transformer_blocks_1_attn2_to_k.lora_down.weight' in keys
    assert 'lora_unet_middle_block_1_transformer_blocks_0_ff_net_2.lora_up.weight' in keys
    assert 'lora_unet_output_blocks_0_1_transformer_blocks_0_attn1_to_out_0.alpha' in keys
    assert 'lora_te1_text_model_encoder_layers_1_self_attn_q_proj.lora_down.weight' in keys
    assert 'lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_up.weight' in keys
    assert 'lora_te2_text_projection.alpha' in keys
    assert not any(k.startswith(('lora_unet_down_blocks', 'lora_te_')) for k in keys)
    assert len(keys) == 3 * len(flatten(model_lora_state(tuned)))


def test_kohya_ours_kohya_keeps_every_tensor(tuned, base, tmp_path):
    first = export_kohya(tuned, tmp_path / 'k.safetensors')
    fresh = copy.deepcopy(base)
    load_adapter(fresh, first)  # kohya -> ours (the adapters in a model of their own)
    again = load_file(str(export_kohya(fresh, tmp_path / 'k2.safetensors')))
    want = load_file(str(first))
    assert sorted(again) == sorted(want)
    assert all(torch.equal(again[k], want[k]) for k in want)


def test_diffusers_layout_names_both_encoders_and_reads_back(tuned, tmp_path):
    path = export_peft_diffusers(tuned, tmp_path / 'd.safetensors')
    keys = set(load_file(str(path)))
    assert 'text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight' in keys
    assert 'text_encoder_2.text_model.encoder.layers.1.mlp.fc1.lora_B.weight' in keys
    assert any(k.startswith('unet.down_blocks.1.attentions.0.transformer_blocks.1.') for k in keys)
    ours = flatten(model_lora_state(tuned))
    for state in (import_peft_diffusers(path, tuned), import_kohya(export_kohya(tuned, tmp_path / 'k.safetensors'),
                                                                   tuned)):
        back = flatten(state)
        assert back.keys() == ours.keys()
        assert all(torch.equal(back[m].down, e.down) and torch.equal(back[m].up, e.up) and back[m].alpha == e.alpha
                   for m, e in ours.items())

"""A tiny LatentDiffusionXL trains through `scepter train` (data with FlexibleResize and
FlexibleCropXL, SDXL's conditioner), in full and with LoRA on the UNet and both text encoders."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest

from scepter_core.checkpoint import load_state_dict

from .conftest import TINY_MODEL, run_cli, tiny_recipe, write_recipe
from .sd_fixtures import sdxl_transforms

OUT_DIM = 16
TEXT_1 = {'vocab_size': 49408, 'hidden_size': 32, 'intermediate_size': 64, 'num_hidden_layers': 2,
          'num_attention_heads': 2, 'max_position_embeddings': 8}
TEXT_2 = {**TEXT_1, 'hidden_size': 48, 'intermediate_size': 96, 'projection_dim': 24}


def tiny_xl_recipe(work: Path, tuner: list | None = None) -> dict:
    model = copy.deepcopy(TINY_MODEL)
    model.pop('TOKENIZER')
    model['NAME'] = 'LatentDiffusionXL'
    model['DIFFUSION_MODEL'].update({'CONTEXT_DIM': 80, 'NUM_CLASSES': 'sequential',
                                     'ADM_IN_CHANNELS': 24 + 6 * OUT_DIM, 'USE_LINEAR_IN_TRANSFORMER': True})
    use_grad = tuner is not None
    model['COND_STAGE_MODEL'] = {'NAME': 'GeneralConditioner', 'EMBEDDERS': [
        {'NAME': 'FrozenCLIPEmbedder', 'CONFIG': TEXT_1, 'MAX_LENGTH': 8, 'LAYER': 'hidden', 'LAYER_IDX': -2,
         'USE_GRAD': use_grad, 'INPUT_KEYS': ['prompt']},
        {'NAME': 'FrozenOpenCLIPEmbedder2', 'CONFIG': TEXT_2, 'MAX_LENGTH': 8, 'LAYER': 'penultimate',
         'LEGACY': False, 'ALWAYS_RETURN_POOLED': True, 'USE_GRAD': use_grad, 'INPUT_KEYS': ['prompt']},
        *[{'NAME': 'ConcatTimestepEmbedderND', 'OUT_DIM': OUT_DIM, 'INPUT_KEYS': [k]}
          for k in ('original_size_as_tuple', 'crop_coords_top_left', 'target_size_as_tuple')]]}
    cfg = tiny_recipe(work, steps=2)
    cfg['SOLVER']['MODEL'] = model
    cfg['SOLVER']['TRAIN_DATA'].update({'IMAGE_SIZE': 24, 'TRANSFORMS': sdxl_transforms(16)})
    cfg['SOLVER'].pop('TEST_DATA')
    if tuner:
        cfg['SOLVER']['TUNER'] = tuner
    return cfg


@pytest.mark.parametrize('lora', [False, True], ids=['full', 'lora'])
def test_tiny_sdxl_trains_two_steps(tmp_path: Path, lora: bool):
    tuner = [{'NAME': 'SwiftLoRA', 'R': 4, 'LORA_ALPHA': 4,
              'TARGET_MODULES': 'model.*(to_q|to_k|to_v|to_out.0|net.0.proj|net.2)$'},
             {'NAME': 'SwiftLoRA', 'R': 4, 'LORA_ALPHA': 4,
              'TARGET_MODULES': 'cond_stage_model.embedders.[01].*(q_proj|k_proj|v_proj|out_proj|mlp.fc1|mlp.fc2)$'}] \
        if lora else None
    recipe = write_recipe(tmp_path / 'xl.yaml', tiny_xl_recipe(tmp_path / 'work', tuner))
    run_cli('train', '--cfg', str(recipe), cwd=tmp_path, timeout=600)
    step = tmp_path / 'work' / 'checkpoints' / 'step-000002'
    files = sorted(p.name for p in step.iterdir())
    assert 'config.yaml' in files
    weights = {k for f in step.glob('*.safetensors') for k in load_state_dict(f)}
    assert weights
    if lora:
        for part in ('model.', 'cond_stage_model.embedders.0.', 'cond_stage_model.embedders.1.'):
            assert any(k.startswith(part) and 'lora' in k.lower() for k in weights), (part, sorted(weights)[:5])
    log = (tmp_path / 'work' / 'std_log.txt').read_text()
    assert 'loss' in log and 'nan' not in log.lower()

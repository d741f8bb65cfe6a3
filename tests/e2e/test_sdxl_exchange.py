"""SDXL weights and LoRAs out to other tools: a tiny SDXL (64-wide attention heads, as the
published models have, so that its SGM single file describes it fully) goes diffusers folder ->
SGM file -> `scepter convert --to diffusers` and loads in StableDiffusionXLPipeline with the same
pixels; a LoRA trained here for 2 steps (UNet and both text encoders) is exported in kohya's and
diffusers' layouts, and diffusers' load_lora_weights gives the image `scepter infer --lora` gives;
the LoRA run converted to a diffusers folder (adapters merged) gives it too."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from scepter_core.families import folder_recipe

from .conftest import run_cli, write_recipe
from .sd_fixtures import sdxl_transforms
from .test_families import _scheduler, _text, _tokenizer, _unet, _vae, saved_pipeline

PROMPT, SEED, STEPS, GUIDANCE, SIZE = 'a red circle on a white background', 7, 3, 5.0, 16
TOL = 1.0  # 1/255: our PNG is rounded to 8 bits, diffusers' float image is not
# The text layers kohya adapts (every CLIP attention and MLP projection): diffusers tells a
# kohya text-encoder file's naming by its out_proj entries and drops the rest without them.
LORA = [{'NAME': 'SwiftLoRA', 'R': 4, 'LORA_ALPHA': 8, 'TARGET_MODULES': 'model.*(to_q|to_k|to_v|to_out.0|net.0.proj)$'},
        {'NAME': 'SwiftLoRA', 'R': 2, 'LORA_ALPHA': 3,
         'TARGET_MODULES': 'cond_stage_model.embedders.[01].*(q_proj|k_proj|v_proj|out_proj|mlp.fc1|mlp.fc2)$'}]


def sdxl64_pipeline():
    """SDXL's structure with the published conventions that weights do not record: 64 channels
    per attention head in the UNet and the text encoders."""
    from diffusers import StableDiffusionXLPipeline
    unet = _unet(11, sample_size=8, down_block_types=('DownBlock2D', 'CrossAttnDownBlock2D'),
                 up_block_types=('CrossAttnUpBlock2D', 'UpBlock2D'), cross_attention_dim=64 + 64,
                 attention_head_dim=(1, 1), transformer_layers_per_block=(1, 2), use_linear_projection=True,
                 addition_embed_type='text_time', addition_time_embed_dim=8,
                 projection_class_embeddings_input_dim=32 + 6 * 8)
    return StableDiffusionXLPipeline(vae=_vae(0.13025, 12), text_encoder=_text(64, 'quick_gelu', seed=13, heads=1),
                                     text_encoder_2=_text(64, 'gelu', projection=32, seed=14, heads=1),
                                     tokenizer=_tokenizer(), tokenizer_2=_tokenizer('!'), unet=unet,
                                     scheduler=_scheduler(), force_zeros_for_empty_prompt=True)


def _diffusers_image(folder: Path, lora: Path | None = None) -> np.ndarray:
    from diffusers import StableDiffusionXLPipeline
    pipe = StableDiffusionXLPipeline.from_pretrained(str(folder))
    pipe.scheduler = _scheduler()  # DDIM trailing, as our --sampler ddim
    if lora is not None:
        pipe.load_lora_weights(str(lora))
    with torch.no_grad():
        return pipe(PROMPT, num_inference_steps=STEPS, guidance_scale=GUIDANCE, height=SIZE, width=SIZE,
                    output_type='np', generator=torch.Generator().manual_seed(SEED)).images[0] * 255


def _infer(weights: Path, out: Path, *extra: str) -> np.ndarray:
    run_cli('infer', '--pretrained-model', str(weights), '--out', str(out), '--prompt', PROMPT, '--steps', str(STEPS),
            '--seed', str(SEED), '--guide-scale', str(GUIDANCE), '--sampler', 'ddim', '--discretization', 'trailing',
            '--size', str(SIZE), str(SIZE), *extra)
    return np.asarray(Image.open(out / '00000.png').convert('RGB')).astype(float)


@pytest.fixture(scope='module')
def folder(tmp_path_factory) -> Path:
    return saved_pipeline(sdxl64_pipeline, tmp_path_factory.mktemp('sdxl'))


def test_sgm_file_converts_to_a_diffusers_folder_with_the_same_pixels(folder: Path, tmp_path: Path):
    ref = _diffusers_image(folder)
    single, back = tmp_path / 'sdxl.safetensors', tmp_path / 'back'
    run_cli('convert', str(folder), str(single), '--to', 'ldm')
    with safe_open(str(single), 'pt') as f:
        assert any(k.startswith('conditioner.embedders.1.model.transformer.resblocks.') for k in f.keys())
    run_cli('convert', str(single), str(back), '--to', 'diffusers')
    assert sorted(p.name for p in back.iterdir()) == ['model_index.json', 'scheduler', 'text_encoder',
                                                      'text_encoder_2', 'tokenizer', 'tokenizer_2', 'unet', 'vae']
    ours = _diffusers_image(back)
    assert ref.std() > 5 and np.abs(ours - ref).max() <= TOL


def test_lora_trained_here_loads_in_diffusers_with_the_same_image(folder: Path, tmp_path: Path):
    recipe = folder_recipe(folder).to_dict()
    recipe.pop('FAMILY')
    solver = recipe['SOLVER']
    solver['MODEL']['PRETRAINED_MODEL'] = str(folder)
    for block in solver['MODEL']['COND_STAGE_MODEL']['EMBEDDERS'][:2]:
        block['USE_GRAD'] = True
    solver.update({'WORK_DIR': str(tmp_path / 'run'), 'MAX_STEPS': 2, 'SEED': 7, 'TUNER': copy.deepcopy(LORA),
                   'OPTIMIZER': {'NAME': 'AdamW', 'LEARNING_RATE': 3e-2},
                   'TRAIN_DATA': {'NAME': 'ShapesDataset', 'IMAGE_SIZE': 24, 'NUM_SAMPLES': 8, 'BATCH_SIZE': 2,
                                  'TRANSFORMS': sdxl_transforms(SIZE)},
                   'TRAIN_HOOKS': [{'NAME': 'BackwardHook'}, {'NAME': 'CheckpointHook', 'INTERVAL': 2}]})
    run_cli('train', '--cfg', str(write_recipe(tmp_path / 'lora.yaml', recipe)), cwd=tmp_path, timeout=600)
    kohya, peft = tmp_path / 'kohya.safetensors', tmp_path / 'peft.safetensors'
    run_cli('convert', str(tmp_path / 'run'), str(kohya), '--to', 'kohya')
    run_cli('convert', str(tmp_path / 'run'), str(peft), '--to', 'peft')
    with safe_open(str(kohya), 'pt') as f:
        keys = set(f.keys())
    for prefix in ('lora_unet_input_blocks_', 'lora_unet_output_blocks_', 'lora_unet_middle_block_1_',
                   'lora_te1_text_model_encoder_layers_', 'lora_te2_text_model_encoder_layers_'):
        assert any(k.startswith(prefix) for k in keys), prefix
    ours = _infer(folder, tmp_path / 'ours', '--lora', str(kohya))
    base = _diffusers_image(folder)
    assert np.abs(ours - base).max() > 3  # the adapters change the image...
    diffs = {p.name: np.abs(_diffusers_image(folder, p) - ours).max() for p in (peft, kohya)}
    assert max(diffs.values()) <= TOL, diffs  # ...as diffusers applies them
    merged = tmp_path / 'merged'
    run_cli('convert', str(tmp_path / 'run'), str(merged), '--to', 'diffusers')
    assert np.abs(_diffusers_image(merged) - ours).max() <= TOL

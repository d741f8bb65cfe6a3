"""Scepter's FLUX.1-dev LoRA recipe, unmodified, trains two steps on the CPU with its ms://
files served from a local mirror holding tiny weights in the original layouts: BFL's
transformer and autoencoder single files, transformers' T5 and CLIP folders (a T5 tokenizer
trained here), the image-text dataset. The frozen base is held in int8 (QUANTIZE_BASE)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from models.tiny_flow import write_clip_dir, write_t5_dir

from scepter_core.checkpoint import load_state_dict, save_state_dict

from .conftest import run_cli
from .sd_fixtures import RECIPES, write_ms_dataset

RECIPE = RECIPES / 'dit_flux1.0_dev_1024_lora.yaml'
FLUX = Path('ms/AI-ModelScope/FLUX.1-dev')
TINY_FLUX = {'IN_CHANNELS': 16, 'HIDDEN_SIZE': 32, 'NUM_HEADS': 2, 'AXES_DIM': [4, 6, 6], 'VEC_IN_DIM': 24,
             'CONTEXT_IN_DIM': 16, 'DEPTH': 1, 'DEPTH_SINGLE_BLOCKS': 1}
TINY_CODER = {'CH': 32, 'CH_MULT': [1, 2], 'NUM_RES_BLOCKS': 1, 'Z_CHANNELS': 4}


def write_flux_mirror(mirror: Path) -> dict[str, torch.Tensor]:
    """The recipe's files at tiny sizes; returns the transformer's weights (BFL names)."""
    from scepter_core.registry import BACKBONES, MODELS
    root = mirror / FLUX
    torch.manual_seed(0)
    flux = BACKBONES.build({'NAME': 'Flux', **TINY_FLUX, 'GUIDANCE_EMBED': True}).state_dict()
    vae = MODELS.build({'NAME': 'AutoencoderKLFlux', 'EMBED_DIM': 4, 'ENCODER': {'NAME': 'Encoder', **TINY_CODER},
                        'DECODER': {'NAME': 'Decoder', **TINY_CODER}}).state_dict()
    root.mkdir(parents=True, exist_ok=True)
    save_state_dict(flux, root / 'flux1-dev.safetensors')
    save_state_dict(vae, root / 'ae.safetensors')
    write_t5_dir(root / 'text_encoder_2', d_model=16)
    write_clip_dir(root / 'text_encoder', hidden=24)
    for model, tokenizer in (('text_encoder_2', 'tokenizer_2'), ('text_encoder', 'tokenizer')):
        shutil.copytree(root / model, root / tokenizer)
    subset = write_ms_dataset(mirror / 'ms' / 'damo' / 'style_custom_dataset')
    shutil.copy(subset / 'train_short.csv', subset / 'train.csv')  # this recipe reads MS_DATASET_SPLIT: train
    return flux


def shrink(work: Path) -> list[str]:
    m = 'SOLVER.MODEL'
    sets = [f'SOLVER.WORK_DIR={work}', 'SOLVER.MAX_STEPS=2', 'SOLVER.EVAL_INTERVAL=2', 'SOLVER.USE_AMP=false',
            'SOLVER.USE_FSDP=false', 'ENV.BACKEND=gloo', 'SOLVER.QUANTIZE_BASE=int8', f'{m}.SIZE_FACTOR=2',
            'SOLVER.SAMPLE_ARGS.IMAGE_SIZE=[32,32]', 'SOLVER.SAMPLE_ARGS.SAMPLE_STEPS=2',
            'SOLVER.TRAIN_DATA.NUM_WORKERS=0', 'SOLVER.TRAIN_DATA.TRANSFORMS.1.SIZE=[32,32]',
            'SOLVER.TRAIN_DATA.TRANSFORMS.2.SIZE=[32,32]', 'SOLVER.EVAL_DATA.NUM_WORKERS=0',
            'SOLVER.EVAL_DATA.IMAGE_SIZE=[32,32]', 'SOLVER.TRAIN_HOOKS.0.PROB_INTERVAL=2',
            'SOLVER.TRAIN_HOOKS.2.LOG_INTERVAL=1', 'SOLVER.TRAIN_HOOKS.4.INTERVAL=2',
            'SOLVER.EVAL_HOOKS.0.PROB_INTERVAL=2', f'{m}.FIRST_STAGE_MODEL.EMBED_DIM=4']
    sets += [f'{m}.DIFFUSION_MODEL.{k}={json.dumps(v)}' for k, v in TINY_FLUX.items()]
    sets += [f'{m}.FIRST_STAGE_MODEL.{coder}.{k}={json.dumps(v)}'
             for coder in ('ENCODER', 'DECODER') for k, v in TINY_CODER.items()]
    return [x for s in sets for x in ('--set', s)]


def test_flux_lora_recipe_trains_two_steps_from_its_mirror_on_an_int8_base(tmp_path: Path):
    mirror = Path(os.environ['SCEPTER_MIRROR'])
    base = write_flux_mirror(mirror)
    work = tmp_path / 'work'
    proc = run_cli('train', '--cfg', str(RECIPE), *shrink(work), cwd=tmp_path, timeout=900)
    log = (work / 'std_log.txt').read_text()
    assert 'QUANTIZE int8' in log and 'nan' not in log.lower(), proc.stderr[-2000:]
    saved = load_state_dict(work / 'checkpoints' / 'step-000002' / 'model.safetensors')
    # SAVE_MODULES [model] with a tuner: the transformer's adapters, on the recipe's targets only
    assert saved and all(k.startswith('model.') and 'lora' in k for k in saved)
    adapted = {k.split('.lora_')[0].removeprefix('model.') for k in saved}
    assert {'double_blocks.0.img_attn.qkv', 'double_blocks.0.txt_mod.lin', 'single_blocks.0.linear1',
            'single_blocks.0.modulation.lin'} <= adapted
    ups = [v for k, v in saved.items() if 'lora_B' in k]
    assert any(float(v.abs().max()) > 0 for v in ups)  # two AdamW steps moved the zero-initialised B
    assert all(k in base for k in ('double_blocks.0.img_attn.qkv.weight', 'final_layer.linear.weight'))
    assert list((work / 'probe').glob('step-*/grid.png'))

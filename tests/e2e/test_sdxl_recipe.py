"""Scepter's SDXL recipe, unmodified, trains two steps on the CPU with its ms:// files served
from a local mirror holding tiny weights in the original layouts: the SGM single file (UNet,
VAE, CLIP-L, and the OpenCLIP bigG tower with its fused in_proj), written from our model through
the convert tables; the CLIP-L directory; the image-text dataset."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from models.tiny_sd import randomize

from scepter_core.checkpoint import load_state_dict
from scepter_core.convert import load_pipeline_state, save_ldm

from .conftest import run_cli
from .sd_fixtures import (CLIP_DIR, DATASET_DIR, RECIPES, TINY_CLIP, TINY_UNET, set_args, shrink_sets,
                          write_clip_dir, write_ms_dataset)

RECIPE = RECIPES / 'stable_diffusion_xl_1024.yaml'
SGM_FILE = Path('ms/AI-ModelScope/stable-diffusion-xl-base-1.0/sd_xl_base_1.0.safetensors')
CLIP_LAYERS = 12  # the recipe reads CLIP-L's hidden_states[11] (LAYER_IDX), its penultimate block
BIG_G = {'hidden_size': 48, 'intermediate_size': 96, 'num_hidden_layers': 2, 'num_attention_heads': 2,
         'projection_dim': 24}
TIME_DIM = 8  # ConcatTimestepEmbedderND.OUT_DIM: each of the three size embedders gives 2 x TIME_DIM
TINY_XL_UNET = {**TINY_UNET, 'NUM_HEADS_CHANNELS': 16, 'ATTENTION_RESOLUTIONS': [2], 'TRANSFORMER_DEPTH': [0, 1],
                'CONTEXT_DIM': TINY_CLIP['hidden_size'] + BIG_G['hidden_size'],
                'ADM_IN_CHANNELS': BIG_G['projection_dim'] + 3 * 2 * TIME_DIM}


def shrink(work: Path) -> list[str]:
    """The recipe's overrides for a tiny run: SD's, with SDXL's UNet and conditioner sizes."""
    embedders = 'SOLVER.MODEL.COND_STAGE_MODEL.EMBEDDERS'
    return shrink_sets(work, TINY_XL_UNET) + [f'{embedders}.1.CONFIG={json.dumps(BIG_G)}'] + \
        [f'{embedders}.{i}.OUT_DIM={TIME_DIM}' for i in (2, 3, 4)]


def write_sdxl_mirror(mirror: Path, work: Path) -> dict[str, torch.Tensor]:
    """The recipe's files in `mirror`. The single file holds the weights of the model the shrunk
    recipe builds (random, other than the CLIP directory's), renamed by our SGM key tables.
    Returns them in our names."""
    from scepter_core.config import Config
    from scepter_core.registry import MODELS
    write_clip_dir(mirror / CLIP_DIR, seed=1, num_hidden_layers=CLIP_LAYERS)
    write_ms_dataset(mirror / DATASET_DIR)
    model_cfg = Config.load(RECIPE, shrink(work)).SOLVER.MODEL
    model_cfg['PRETRAINED_MODEL'] = None
    state = {k: v.detach().clone() for k, v in randomize(MODELS.build(model_cfg), 2, std=0.05).state_dict().items()}
    (mirror / SGM_FILE).parent.mkdir(parents=True, exist_ok=True)
    save_ldm(state, mirror / SGM_FILE)
    return state


@pytest.mark.timeout(900)
def test_sdxl_recipe_trains_two_steps_from_its_mirrored_sgm_file(tmp_path: Path):
    mirror, work = Path(os.environ['SCEPTER_MIRROR']), tmp_path / 'work'
    ours = write_sdxl_mirror(mirror, work)
    sgm = load_state_dict(mirror / SGM_FILE)
    assert {'model.diffusion_model.label_emb.0.0.weight', 'first_stage_model.encoder.conv_in.weight',
            'conditioner.embedders.0.transformer.text_model.encoder.layers.11.mlp.fc1.weight',
            'conditioner.embedders.1.model.transformer.resblocks.1.attn.in_proj_weight',
            'conditioner.embedders.1.model.text_projection'} <= set(sgm)
    width = BIG_G['hidden_size']  # OpenCLIP's q/k/v, fused
    assert sgm['conditioner.embedders.1.model.transformer.resblocks.1.attn.in_proj_weight'].shape == (3 * width, width)
    assert not any(k.startswith('cond_stage_model.') for k in sgm)

    run_cli('train', '--cfg', str(RECIPE), *set_args(shrink(work)), cwd=tmp_path, timeout=850)
    log = (work / 'std_log.txt').read_text()
    assert 'loss' in log and 'nan' not in log.lower()
    saved = load_state_dict(work / 'checkpoints' / 'step-000002' / 'model.safetensors')
    original = load_pipeline_state(mirror / SGM_FILE)  # the single file, read back in our names
    assert set(original) == set(ours) and set(original) <= set(saved)
    unet = [k for k in original if k.startswith('model.')]
    frozen = [k for k in original if k.startswith(('first_stage_model.', 'cond_stage_model.'))]
    # both text towers and the VAE are frozen: still the file's tensors (bigG's q/k/v split from
    # its fused in_proj), not the CLIP directory's, which the recipe reads first
    assert all(torch.equal(saved[k], original[k]) and torch.equal(original[k], ours[k]) for k in frozen)
    clip_dir = load_state_dict(mirror / CLIP_DIR / 'model.safetensors')
    name = next(k for k in clip_dir if k.endswith('token_embedding.weight'))
    assert not torch.equal(clip_dir[name], saved['cond_stage_model.embedders.0.transformer.text_model.'
                                                 + name.removeprefix('text_model.')])
    # the UNet started from the file and took two AdamW steps of lr 1e-5: moved, but barely
    moved = max(float((saved[k] - original[k]).abs().max()) for k in unet)
    assert 0 < moved < 1e-3
    assert (work / 'probe' / 'step-000002' / 'grid.png').is_file()
    resolved = yaml.safe_load((work / 'checkpoints' / 'step-000002' / 'config.yaml').read_text())['SOLVER']
    assert resolved['MODEL']['PRETRAINED_MODEL'] == 'ms://AI-ModelScope/stable-diffusion-xl-base-1.0@' + SGM_FILE.name

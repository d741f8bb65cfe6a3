"""Scepter's own SD1.5 recipes, unmodified: each validates through the CLI (as does our SD1.5
example), and the full fine-tune trains with its ms:// weights, CLIP and dataset served from
a local mirror."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml

from scepter_core.checkpoint import load_state_dict
from scepter_core.convert import load_pipeline_state

from .conftest import ROOT, run_cli
from .sd_fixtures import CLIP_DIR, RECIPES, SD15_RECIPE, SD_FILE, shrink_sd15_recipe, write_sd15_mirror

EXAMPLE = ROOT / 'examples' / 'sd15_512_full.yaml'  # ours, written in our format
SCEPTER_RECIPES = [RECIPES / f'stable_diffusion_1.5_512{kind}.yaml' for kind in ('', '_lora', '_textlora')]


@pytest.mark.parametrize('path', SCEPTER_RECIPES + [EXAMPLE], ids=lambda p: p.stem)
def test_recipe_validates_as_it_is(path: Path):
    proc = run_cli('config', 'validate', '--cfg', str(path))
    assert 'is valid' in proc.stdout


def test_sd15_recipe_trains_from_its_mirrored_checkpoint(tmp_path: Path):
    mirror = Path(os.environ['SCEPTER_MIRROR'])
    write_sd15_mirror(mirror, seed=5)
    work = tmp_path / 'work'
    run_cli('train', '--cfg', str(SD15_RECIPE), *shrink_sd15_recipe(work), cwd=tmp_path)  # cwd: the recipe's ./cache

    step = work / 'checkpoints' / 'step-000002'
    saved = load_state_dict(step / 'model.safetensors')
    original = load_pipeline_state(mirror / SD_FILE)  # the single file, in our names
    frozen = [k for k in original if k.startswith(('first_stage_model.', 'cond_stage_model.'))]
    unet = [k for k in original if k.startswith('model.')]
    assert frozen and unet and set(original) <= set(saved)
    # VAE and text encoder are frozen: still the file's tensors, bit for bit (the text encoder
    # too, although the CLIP directory, read first, holds other weights)
    assert all(torch.equal(saved[k], original[k]) for k in frozen)
    clip_dir = load_state_dict(mirror / CLIP_DIR / 'model.safetensors')
    name = next(k for k in clip_dir if k.endswith('token_embedding.weight'))
    ours = 'cond_stage_model.transformer.text_model.' + name.removeprefix('text_model.')
    assert not torch.equal(clip_dir[name], saved[ours])
    # the UNet started from the file and took two AdamW steps of lr 1e-5: moved, but barely
    moved = max(float((saved[k] - original[k]).abs().max()) for k in unet)
    assert 0 < moved < 1e-3

    # the run kept the recipe's own URIs, evaluated on test_short and probed
    resolved = yaml.safe_load((step / 'config.yaml').read_text())['SOLVER']
    assert resolved['MODEL']['PRETRAINED_MODEL'] == \
        'ms://AI-ModelScope/stable-diffusion-v1-5@v1-5-pruned-emaonly.safetensors'
    assert resolved['TRAIN_DATA']['MS_DATASET_NAME'] == 'style_custom_dataset'
    assert len(list((work / 'eval' / 'step-000002').glob('0*.png'))) == 1  # test_short.csv has one row
    assert (work / 'probe' / 'step-000002' / 'grid.png').is_file()

"""Scepter's own LoRA recipes validate and train, shrunk with --set style overrides, on a
local copy of their ModelScope dataset: only adapters change, checkpoints hold only adapters."""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import torch
from fixtures import SCEPTER_RECIPES
from lora_helpers import TINY_MODEL, denoiser_output
from PIL import Image
from safetensors import safe_open

from scepter_core.checkpoint import load_state_dict, save_state_dict
from scepter_core.config import Config
from scepter_core.launch import run_worker
from scepter_core.tuners import load_adapter, tuner_state_dict
from scepter_core.validate import validate_recipe

ROOT = Path(__file__).resolve().parents[2]
RECIPES = SCEPTER_RECIPES
COLORS = {'red': (220, 30, 30), 'green': (30, 200, 40), 'blue': (30, 40, 220)}


def shrink(work_dir: Path, base: Path) -> list[str]:
    """Overrides that turn the SD1.5 recipe into a tiny CPU run from a local base model."""
    m = 'SOLVER.MODEL'
    unet, clip = TINY_MODEL['DIFFUSION_MODEL'], TINY_MODEL['COND_STAGE_MODEL']['CONFIG']
    overrides = [f'SOLVER.WORK_DIR={work_dir}', 'SOLVER.MAX_STEPS=2',
                 'SOLVER.USE_AMP=false',  # fp16 autocast is emulated, and slow, on CPU
                 f'{m}.PRETRAINED_MODEL={base}', f'{m}.SIZE_FACTOR=4',
                 f'{m}.TOKENIZER.PRETRAINED_PATH=null', f'{m}.TOKENIZER.LENGTH=8',
                 f'{m}.COND_STAGE_MODEL.PRETRAINED_MODEL=null', f'{m}.COND_STAGE_MODEL.MAX_LENGTH=8',
                 f'{m}.COND_STAGE_MODEL.CONFIG={json.dumps(clip)}',
                 'SOLVER.TRAIN_DATA.NUM_WORKERS=0', 'SOLVER.TRAIN_DATA.BATCH_SIZE=2',
                 'SOLVER.TRAIN_DATA.TRANSFORMS.1.SIZE=16', 'SOLVER.TRAIN_DATA.TRANSFORMS.2.SIZE=16',
                 'SOLVER.EVAL_DATA.NUM_WORKERS=0', 'SOLVER.TRAIN_HOOKS.1.LOG_INTERVAL=1',
                 'SOLVER.SAMPLE_ARGS.IMAGE_SIZE=[16, 16]', 'SOLVER.SAMPLE_ARGS.SAMPLE_STEPS=2']
    overrides += [f'{m}.DIFFUSION_MODEL.{k}={json.dumps(v)}' for k, v in unet.items() if k != 'NAME']
    for coder in ('ENCODER', 'DECODER'):
        overrides += [f'{m}.FIRST_STAGE_MODEL.{coder}.{k}={json.dumps(v)}'
                      for k, v in TINY_MODEL['FIRST_STAGE_MODEL'][coder].items() if k != 'NAME']
    return overrides


def write_ms_dataset(root: Path) -> None:
    """damo/style_custom_dataset@3D as ModelScope lays it out: split CSVs and their images."""
    folder = root / 'ms' / 'damo' / 'style_custom_dataset' / '3D'
    (folder / 'images').mkdir(parents=True)
    rows = []
    for name, rgb in COLORS.items():
        Image.new('RGB', (24, 20), rgb).save(folder / 'images' / f'{name}.png')
        rows.append(f'images/{name}.png,a {name} picture in 3D style')
    (folder / 'train_short.csv').write_text('Image:FILE,Prompt\n' + '\n'.join(rows) + '\n')
    (folder / 'test_short.csv').write_text('Image,Prompt\n' + '\n'.join(rows[:1]) + '\n')


@pytest.fixture
def base_model_file(base_model, tmp_path: Path) -> Path:
    path = tmp_path / 'base.safetensors'
    save_state_dict(base_model.state_dict(), path)
    return path


@pytest.mark.parametrize('recipe, parts', [('lora', {'model'}), ('textlora', {'model', 'cond_stage_model'})])
def test_scepter_lora_recipe_validates_and_trains_only_adapters(recipe, parts, base_model_file, tmp_path: Path):
    path = RECIPES / f'stable_diffusion_1.5_512_{recipe}.yaml'
    assert validate_recipe(Config.load(path)) == []
    write_ms_dataset(Path(os.environ['SCEPTER_MIRROR']))
    n_tuners = len(parts)
    tuner_keys = [f'SOLVER.TUNER.{i}.{k}={v}' for i in range(n_tuners) for k, v in (('R', 4), ('LORA_ALPHA', 8))]
    cfg = Config.load(path, shrink(tmp_path / 'work', base_model_file) + tuner_keys)
    assert validate_recipe(cfg) == []
    solver = run_worker(cfg, mode='train')
    assert solver.step == 2
    model = solver.unwrapped_model
    adapters = tuner_state_dict(model)
    assert {k.split('.')[0] for k in adapters} == parts
    # every base weight is bit-identical to the file the run started from
    base = load_state_dict(base_model_file)
    current = {k.replace('.base_layer.', '.'): v for k, v in model.state_dict().items() if k not in adapters}
    assert current.keys() == base.keys()
    assert all(torch.equal(current[k], base[k]) for k in base)
    # the adapters moved (B starts at zero), in the UNet and, with USE_GRAD, in the text encoder
    moved = {k.split('.')[0] for k, v in adapters.items() if '.lora_B.' in k and v.abs().sum() > 0}
    assert moved == parts
    # the checkpoint holds exactly the adapters: a small fraction of the model
    weights = tmp_path / 'work' / 'checkpoints' / 'step-000002' / 'model.safetensors'
    with safe_open(str(weights), 'pt') as f:
        assert set(f.keys()) == set(adapters)
    assert weights.stat().st_size < base_model_file.stat().st_size / 5


def test_a_trained_lora_run_continues_from_its_checkpoint(base_model, base_model_file, tmp_path: Path):
    """SOLVER.TUNER given as the path of a trained adapter (here: the first run's work dir)."""
    write_ms_dataset(Path(os.environ['SCEPTER_MIRROR']))
    path = RECIPES / 'stable_diffusion_1.5_512_lora.yaml'
    first = run_worker(Config.load(path, shrink(tmp_path / 'a', base_model_file) + ['SOLVER.TUNER.0.R=4']))
    trained = {k: v.clone() for k, v in tuner_state_dict(first.unwrapped_model).items()}
    cfg = Config.load(path, shrink(tmp_path / 'b', base_model_file) + [f'SOLVER.TUNER={tmp_path / "a"}'])
    second = run_worker(copy.deepcopy(cfg))
    after = tuner_state_dict(second.unwrapped_model)
    assert after.keys() == trained.keys()
    assert all(not torch.equal(after[k], trained[k]) for k in trained if '.lora_B.' in k)  # it trained on
    with safe_open(str(tmp_path / 'b' / 'checkpoints' / 'step-000002' / 'model.safetensors'), 'pt') as f:
        assert set(f.keys()) == set(trained)
    # the second run's checkpoint loads with the first run's configs (alpha 64, not R = 4)
    reloaded = copy.deepcopy(base_model)
    load_adapter(reloaded, str(tmp_path / 'b'))
    torch.testing.assert_close(denoiser_output(reloaded), denoiser_output(second.unwrapped_model.eval()))

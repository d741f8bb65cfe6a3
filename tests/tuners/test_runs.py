"""LoRA training runs end to end: checkpoints carry the adapter metadata, the EMA of a tuned
model averages its adapters, and `scepter infer / test / convert` take a LoRA run's
checkpoint as its base model (from the run's recipe) plus its adapters."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from lora_helpers import TINY_MODEL, denoiser_output, lora_blocks, lora_run_recipe
from PIL import Image
from safetensors import safe_open

from scepter_cli.main import main
from scepter_core.checkpoint import save_state_dict
from scepter_core.config import Config
from scepter_core.inference import build_model
from scepter_core.launch import run_worker
from scepter_core.registry import MODELS
from scepter_core.tuners import base_model_hash, is_tuned, load_adapter, tuner_state_dict
from scepter_core.tuners.state import is_adapter_key
from scepter_core.utils.images import save_png


@pytest.fixture(scope='module')
def base_file(base_model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp('base') / 'base.safetensors'
    save_state_dict(base_model.state_dict(), path)
    return path


def train(work: Path, base: Path, **kwargs) -> tuple[Path, object]:
    """Write the recipe beside the work dir (as a user would) and train it in this process."""
    recipe = work.parent / 'recipe.yaml'
    recipe.write_text(yaml.safe_dump(lora_run_recipe(work, base, **kwargs), sort_keys=False))
    return recipe, run_worker(Config.load(recipe), mode='train')


@pytest.fixture(scope='module')
def lora_run(base_file, tmp_path_factory):
    """A 2-step LoRA run (checkpoint at step 2): (work dir, recipe, solver)."""
    work = tmp_path_factory.mktemp('lora_run') / 'work'
    recipe, solver = train(work, base_file, steps=2)
    return work, recipe, solver


def read_weights(path: Path) -> tuple[set[str], dict[str, str]]:
    with safe_open(str(path), 'pt') as f:
        return set(f.keys()), f.metadata()


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_lora_checkpoint_carries_the_adapter_metadata(lora_run, base_model):
    work, _, solver = lora_run
    keys, meta = read_weights(work / 'checkpoints' / 'step-000002' / 'model.safetensors')
    assert keys == set(tuner_state_dict(solver.unwrapped_model))
    assert set(meta) == {'format', 'step', 'tuners', 'base_hash'}
    assert meta['format'] == 'scepter-lora' and meta['step'] == '2'
    assert meta['base_hash'] == base_model_hash(base_model)
    tuners = json.loads(meta['tuners'])
    assert sorted(tuners) == ['lora0', 'lora1'] and [tuners[a]['R'] for a in ('lora0', 'lora1')] == [4, 2]
    assert tuners['lora1']['TARGET_MODULES'] == lora_blocks()[1]['TARGET_MODULES']


def test_infer_test_and_convert_take_a_lora_run_as_base_plus_adapters(lora_run, base_model, tmp_path: Path):
    work, recipe, solver = lora_run
    trained = solver.unwrapped_model.eval()
    # what `scepter infer` builds: the base model the run's recipe names, the run's adapters on top
    model, _ = build_model(str(work))
    assert is_tuned(model)
    # 1e-5: the trained model runs accel's training paths (where the CPU probe picks oneDNN, the
    # attention Function), the built one its inference paths; their kernels round differently
    torch.testing.assert_close(denoiser_output(model), denoiser_output(trained), atol=1e-5, rtol=0)
    assert (denoiser_output(model) - denoiser_output(base_model)).abs().max() > 1e-4

    # scepter test with the run's recipe (its TUNER blocks give way to the run's adapters)
    assert main(['--debug', 'test', '--cfg', str(recipe), '--pretrained-model', str(work / 'checkpoints' / 'latest'),
                 '--work-dir', str(tmp_path / 'tested')]) == 0
    prompt = json.loads((tmp_path / 'tested' / 'test' / 'samples.json').read_text())[0]['prompt']
    save_png(solver.generate([prompt])[0]['image'], tmp_path / 'expected.png')
    expected = pixels(tmp_path / 'expected.png')
    assert np.array_equal(pixels(tmp_path / 'tested' / 'test' / '00000.png'), expected)

    # scepter infer from the work dir: the same image
    assert main(['--debug', 'infer', '--pretrained-model', str(work), '--prompt', prompt,
                 '--out', str(tmp_path / 'infer')]) == 0
    assert np.array_equal(pixels(tmp_path / 'infer' / '00000.png'), expected)

    # scepter convert: the run merged into a plain checkpoint that loads without any LoRA
    merged = tmp_path / 'merged.safetensors'
    assert main(['--debug', 'convert', str(work), str(merged), '--to', 'scepter']) == 0
    assert not any('lora' in k or 'base_layer' in k for k in read_weights(merged)[0])
    plain = MODELS.build({**copy.deepcopy(TINY_MODEL), 'PRETRAINED_MODEL': str(merged)}).eval()
    assert not is_tuned(plain)
    torch.testing.assert_close(denoiser_output(plain), denoiser_output(trained), atol=1e-5, rtol=0)


def test_ema_of_a_lora_run_averages_its_adapters(base_file, base_model, tmp_path: Path):
    """USE_EMA with a TUNER: the EMA copy is the tuned UNet; its adapters average the trained
    ones, its base weights stay the base (this raised KeyError in ModelEmaHook before)."""
    work = tmp_path / 'work'
    _, solver = train(work, base_file, steps=3, use_ema=True, hooks=[{'NAME': 'ModelEmaHook', 'DECAY': 0.5}])
    model = solver.unwrapped_model
    adapters = tuner_state_dict(model)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(adapters)  # the EMA copy never trains
    ema = {k: v for k, v in tuner_state_dict(model, ema=True).items() if k not in adapters}
    assert {k.replace('model_ema.', 'model.', 1) for k in ema} == {k for k in adapters if k.startswith('model.')}
    base = base_model.state_dict()
    for k, v in model.model_ema.state_dict().items():
        if not is_adapter_key(k):
            assert torch.equal(v, base['model.' + k.replace('.base_layer.', '.')]), k

    # both checkpoints hold the adapters and the EMA copy's; ema_3 = lerp(ema_2, w_3, 1 - DECAY)
    ckpts = work / 'checkpoints'
    keys, _ = read_weights(ckpts / 'step-000003' / 'model.safetensors')
    assert keys == set(adapters) | set(ema)
    with safe_open(str(ckpts / 'step-000002' / 'model.safetensors'), 'pt') as f:
        ema_2 = {k: f.get_tensor(k) for k in ema}
    for k, v in ema.items():
        torch.testing.assert_close(v, torch.lerp(ema_2[k], adapters[k.replace('model_ema.', 'model.', 1)], 0.5))
    assert any('.lora_B.' in k and v.abs().sum() > 0 for k, v in ema.items())

    # a fresh model with an EMA copy gets both back from the checkpoint
    fresh = MODELS.build({**copy.deepcopy(TINY_MODEL), 'PRETRAINED_MODEL': str(base_file), 'USE_EMA': True})
    load_adapter(fresh, str(work))
    restored = fresh.state_dict()
    assert all(torch.equal(restored[k], v) for k, v in {**adapters, **ema}.items())

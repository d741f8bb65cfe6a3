"""One tiny SD model saved as an original single file (.safetensors, .ckpt), a diffusers folder
and our checkpoint gives the same image with `scepter infer`; a full-size SD1.5 single file
runs without a recipe; whole-model loading takes the file's tensors instead of copying them."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from scepter_core.checkpoint import load_state_dict
from scepter_core.convert import save_diffusers, save_ldm, save_ours
from scepter_core.registry import MODELS

from .conftest import run_cli
from .sd_fixtures import TINY_CLIP, sd15_shapes, tiny_model_cfg, tiny_recipe, tiny_sd_state, write_random_safetensors

PROMPT = 'a red circle on a white background'
TEXT_CFG = {**TINY_CLIP, 'architectures': ['CLIPTextModel'], 'model_type': 'clip_text_model'}


@pytest.fixture(scope='module')
def saved(tmp_path_factory) -> dict[str, Path]:
    """The same weights in every format, and the tiny recipe that describes them."""
    root = tmp_path_factory.mktemp('sd_formats')
    state, model = tiny_sd_state(seed=3), tiny_model_cfg()
    recipe = root / 'tiny.yaml'
    recipe.write_text(yaml.safe_dump(tiny_recipe(SEED=11)))
    out = {'ldm': root / 'v1-5-tiny.safetensors', 'ckpt': root / 'v1-5-tiny.ckpt', 'diffusers': root / 'diffusers',
           'ours': root / 'ours', 'recipe': recipe}
    save_ldm(state, out['ldm'])
    save_ldm(state, out['ckpt'])
    save_diffusers(state, out['diffusers'], model['DIFFUSION_MODEL'], model['FIRST_STAGE_MODEL'], TEXT_CFG)
    save_ours(state, out['ours'] / 'model.safetensors')  # a step directory: weights + the recipe beside them
    (out['ours'] / 'config.yaml').write_text(recipe.read_text())
    return out


def infer(weights: Path, out: Path, *args: str) -> np.ndarray:
    # 900 s: the SD1.5-sized file (2 GB) is read and run on a small shared CPU
    proc = run_cli('infer', '--pretrained-model', str(weights), '--prompt', PROMPT, '--out', str(out), *args,
                   timeout=900)
    # our warning for layers missing from the file (other packages' import warnings do not count)
    assert 'initialised afresh' not in proc.stderr, proc.stderr
    return np.asarray(Image.open(out / '00000.png').convert('RGB')).astype(int)


def test_every_format_gives_the_same_image(saved, tmp_path: Path):
    recipe = ('--cfg', str(saved['recipe']))
    images = {'ours': infer(saved['ours'], tmp_path / 'ours')}  # finds config.yaml beside the weights
    for fmt in ('ldm', 'ckpt', 'diffusers'):
        images[fmt] = infer(saved[fmt], tmp_path / fmt, *recipe)
    images['cuda-graph'] = infer(saved['ours'], tmp_path / 'graph', '--cuda-graph')  # CUDA only: here a no-op
    ref = images['ours']
    assert ref.shape == (32, 32, 3) and ref.std() > 1  # a picture, not a flat fill
    for fmt, img in images.items():
        assert np.abs(img - ref).max() <= 1, fmt


def test_sd15_single_file_runs_without_a_recipe(tmp_path: Path):
    """A random SD1.5-sized single file (fp16, 2 GB, LDM names): `scepter infer` picks the
    built-in SD1.5 recipe. The decoder's output layer is fixed so that, whatever the UNet
    draws, the picture is one known colour: only the file's weights, loaded, give it."""
    shapes = sd15_shapes()
    out_conv = 'first_stage_model.decoder.conv_out'
    fixed = {f'{out_conv}.weight': torch.zeros(shapes[f'{out_conv}.weight']),
             f'{out_conv}.bias': torch.tensor([0.5, -0.5, 0.0])}
    path = write_random_safetensors(tmp_path / 'v1-5-pruned-emaonly.safetensors', shapes, fixed)
    assert sum(torch.Size(s).numel() for s in shapes.values()) > 1_000_000_000
    img = infer(path, tmp_path / 'out', '--steps', '1', '--size', '64', '64')
    assert img.shape == (64, 64, 3)
    assert np.abs(img - [191, 64, 128]).max() <= 1  # (bias + 1) / 2 * 255


def test_whole_model_loading_assigns_the_file_tensors(saved):
    """Parameters become views of the memory-mapped file (no second copy); the EMA copy,
    absent from the file, starts as the UNet in its own memory."""
    cfg = {**tiny_model_cfg(), 'PRETRAINED_MODEL': str(saved['ours'] / 'model.safetensors'), 'USE_EMA': True}
    model = MODELS.build(cfg)
    file = load_state_dict(saved['ours'] / 'model.safetensors')
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in file.items())
    storages = {p.untyped_storage().data_ptr() for n, p in model.named_parameters() if not n.startswith('model_ema.')}
    assert len(storages) == 1  # UNet, VAE and text encoder: one mapped file
    assert all(torch.equal(state[f'model_ema.{k[6:]}'], v) for k, v in file.items() if k.startswith('model.'))
    assert model.model_ema.out[2].weight.untyped_storage().data_ptr() not in storages
    assert not any(p.requires_grad for p in model.model_ema.parameters())
    assert not any(p.requires_grad for p in model.first_stage_model.parameters())
    assert all(p.requires_grad for p in model.model.parameters())


@pytest.mark.parametrize('fmt', ['ldm', 'diffusers'])
def test_original_formats_load_with_nothing_missing(saved, fmt):
    """A file without scale_factor (diffusers; an original SD1.5 file, where it is not a buffer)
    keeps the recipe's value, one with it (an LDM file with scale_by_std) gives its own; nothing
    is reported missing either way."""
    model = MODELS.build({**tiny_model_cfg(), 'SCALE_FACTOR': 0.25})
    source = saved[fmt]
    if fmt == 'ldm':  # the same file without the buffer, as SD1.5's own files are
        from safetensors.torch import save_file
        state = load_state_dict(source)
        in_file = float(state.pop('scale_factor'))
        save_file(state, str(source.with_name('no_scale.safetensors')))
        report = model.load_pretrained_model(str(source))
        assert report.missing == 0 and float(model.scale_factor) == pytest.approx(in_file)
        model = MODELS.build({**tiny_model_cfg(), 'SCALE_FACTOR': 0.25})
        source = source.with_name('no_scale.safetensors')
    report = model.load_pretrained_model(str(source))
    assert report.missing == 0 and report.unexpected == 0, report.summary()
    assert float(model.scale_factor) == 0.25


def test_infer_options_are_their_sample_args_keys(saved, tmp_path: Path):
    """Each sampling option of `scepter infer` (Scepter's spellings here) is its SAMPLE_ARGS
    key: the same picture as setting the key in the recipe, another than the recipe's own."""
    values = {'SAMPLE_STEPS': ('--sample_steps', '2'), 'GUIDE_SCALE': ('--guide_scale', '3.0'),
              'SEED': ('--seed', '5'), 'N_PROMPT': ('--n_prompt', 'blurry'), 'DISCRETIZATION': ('--discretization', 'leading')}
    by_flags = infer(saved['ours'], tmp_path / 'flags', *[x for pair in values.values() for x in pair])
    by_keys = infer(saved['ours'], tmp_path / 'keys',
                    *[x for k, (_, v) in values.items() for x in ('--set', f'SOLVER.SAMPLE_ARGS.{k}={v}')])
    recipe = infer(saved['ours'], tmp_path / 'recipe')
    assert np.array_equal(by_flags, by_keys)  # the same computation in the same order
    assert np.abs(by_flags - recipe).max() > 8

"""Formats and converters: a tiny SD model written as an LDM file (.safetensors, .ckpt), a
diffusers folder and our checkpoint loads into identical tensors; round trips are bit-exact;
diffusers and transformers read what we write; `scepter convert` works as a command."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import yaml
from models.tiny_sd import TINY_CLIP, TINY_UNET, TINY_VAE, build, randomize, tiny_pipeline_state

from scepter_core.checkpoint import load_state_dict
from scepter_core.convert import (check_against_config, detect_format, diffusers_unet_config, diffusers_vae_config,
                                  format_of_keys, ldm_to_ours, load_pipeline_state, ours_to_diffusers, ours_to_ldm,
                                  save_diffusers, save_ldm, save_ours, vae_keymap)
from scepter_core.errors import CheckpointError, ConfigError

TEXT_CFG = {**TINY_CLIP, 'architectures': ['CLIPTextModel'], 'model_type': 'clip_text_model'}
MODEL_PARTS = ('model.', 'first_stage_model.', 'cond_stage_model.')


@pytest.fixture(scope='module')
def state() -> dict[str, torch.Tensor]:
    torch.set_num_threads(1)
    return tiny_pipeline_state()


@pytest.fixture(scope='module')
def files(tmp_path_factory, state):
    root = tmp_path_factory.mktemp('formats')
    out = {'ldm': root / 'sd.safetensors', 'ldm_ckpt': root / 'sd.ckpt', 'scepter': root / 'ours.safetensors',
           'diffusers': root / 'diffusers'}
    save_ldm(state, out['ldm'])
    save_ldm(state, out['ldm_ckpt'])
    save_ours(state, out['scepter'])
    save_diffusers(state, out['diffusers'], TINY_UNET, TINY_VAE, TEXT_CFG)
    return out


def _same(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def test_formats_are_detected(files):
    assert {name: detect_format(path) for name, path in files.items()} == \
        {'ldm': 'ldm', 'ldm_ckpt': 'ldm', 'scepter': 'scepter', 'diffusers': 'diffusers'}
    raw = load_state_dict(files['ldm'])
    assert 'model.diffusion_model.input_blocks.0.0.weight' in raw
    assert 'model_ema.diffusion_modelinput_blocks00weight' in raw  # LDM's EMA spelling


def test_every_format_loads_into_identical_tensors(files, state):
    for name in ('ldm', 'ldm_ckpt', 'scepter'):
        assert _same(load_pipeline_state(files[name]), state), name
    weights = {k: v for k, v in state.items() if k.startswith(MODEL_PARTS)}
    assert _same(load_pipeline_state(files['diffusers']), weights)  # no EMA or schedule in diffusers


def test_ema_selection(files, state, tmp_path):
    ema = load_pipeline_state(files['ldm'], use_ema=True)
    assert torch.equal(ema['model.out.2.weight'], state['model_ema.out.2.weight'])
    assert not torch.equal(ema['model.out.2.weight'], state['model.out.2.weight'])
    assert torch.equal(ema['first_stage_model.quant_conv.weight'], state['first_stage_model.quant_conv.weight'])
    with pytest.raises(CheckpointError, match='no EMA copy'):
        load_pipeline_state(files['diffusers'], use_ema=True)
    plain = tmp_path / 'no_ema.safetensors'
    save_ldm({k: v for k, v in state.items() if not k.startswith('model_ema.')}, plain)
    with pytest.raises(CheckpointError, match='model_ema'):
        load_pipeline_state(plain, use_ema=True)


def test_ldm_round_trip_is_bit_exact_and_old_names_are_read(files, state):
    raw = load_state_dict(files['ldm'])
    assert _same(ours_to_ldm(ldm_to_ours(raw)), raw)
    old = {k.replace('cond_stage_model.transformer.text_model.', 'cond_stage_model.transformer.'): v
           for k, v in raw.items()}
    old['cond_stage_model.transformer.embeddings.position_ids'] = torch.arange(16)[None]
    ours = ldm_to_ours(old)
    assert torch.equal(ours['cond_stage_model.transformer.text_model.final_layer_norm.weight'],
                       state['cond_stage_model.transformer.text_model.final_layer_norm.weight'])
    # an EMA-only file (no regular UNet): EMA names resolve against the configured architecture
    ema_only = {k: v for k, v in raw.items() if not k.startswith('model.diffusion_model.')}
    assert format_of_keys(ema_only) == 'ldm'
    assert _same({k: v for k, v in ldm_to_ours(ema_only, TINY_UNET).items() if k.startswith('model_ema.')},
                 {k: v for k, v in state.items() if k.startswith('model_ema.')})


def test_diffusers_round_trip_from_models_saved_by_diffusers(tmp_path):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    originals = {
        'unet': randomize(UNet2DConditionModel.from_config(diffusers_unet_config(TINY_UNET)), 5),
        'vae': randomize(AutoencoderKL.from_config(diffusers_vae_config(TINY_VAE)), 6),
        'text_encoder': randomize(CLIPTextModel(CLIPTextConfig(**TINY_CLIP)), 7),
    }
    for part, model in originals.items():
        model.save_pretrained(tmp_path / part)
    ours = load_pipeline_state(tmp_path)
    back = ours_to_diffusers(ours, TINY_UNET, TINY_VAE)
    for part, model in originals.items():
        want = model.state_dict()
        if part == 'text_encoder':  # written with the hub's `text_model.` level, whichever transformers saved it
            want = {f'text_model.{k.removeprefix("text_model.")}': v for k, v in want.items()}
        assert _same(back[part], want), part
    unet = build('BACKBONES', TINY_UNET)
    unet.load_state_dict({k[len('model.'):]: v for k, v in ours.items() if k.startswith('model.')}, strict=True)
    x, t, ctx = torch.randn(1, 4, 8, 8), torch.tensor([7]), torch.randn(1, 3, 32)
    with torch.no_grad():
        assert (unet(x, t, ctx) - originals['unet'](x, t, ctx).sample).abs().max() < 1e-5


def test_what_we_write_loads_in_diffusers_and_transformers(files, state):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel
    folder = files['diffusers']
    expected = ours_to_diffusers(state, TINY_UNET, TINY_VAE)
    loaded = {'unet': UNet2DConditionModel.from_pretrained(folder, subfolder='unet'),
              'vae': AutoencoderKL.from_pretrained(folder, subfolder='vae'),
              'text_encoder': CLIPTextModel.from_pretrained(folder / 'text_encoder')}
    for part, model in loaded.items():
        got = model.state_dict()
        if part == 'text_encoder':
            got = {f'text_model.{k.removeprefix("text_model.")}': v for k, v in got.items()}
        assert _same(dict(got), expected[part]), part
    assert loaded['vae'].config.scaling_factor == pytest.approx(0.18215)


def test_legacy_diffusers_vae_attention_names():
    from diffusers import AutoencoderKL
    theirs = randomize(AutoencoderKL.from_config(diffusers_vae_config(TINY_VAE)), 8).state_dict()
    legacy = {k.replace('attentions.0.to_q', 'attentions.0.query').replace('attentions.0.to_k', 'attentions.0.key')
              .replace('attentions.0.to_v', 'attentions.0.value').replace('attentions.0.to_out.0', 'attentions.0.proj_attn'): v
              for k, v in theirs.items()}
    assert legacy.keys() != theirs.keys()
    assert _same(vae_keymap(TINY_VAE).to_ours(legacy), vae_keymap(TINY_VAE).to_ours(theirs))


def test_wrong_architecture_and_unknown_keys_are_named(state):
    with pytest.raises(ConfigError, match=r"model\.input_blocks.*pass the recipe"):
        check_against_config(state)  # SD1.5 config against the tiny weights
    check_against_config(state, TINY_UNET, TINY_VAE)
    with pytest.raises(CheckpointError, match='UNet: 1 keys have no counterpart, e.g. extra.weight'):
        ours_to_diffusers({**state, 'model.extra.weight': torch.zeros(1)}, TINY_UNET, TINY_VAE)


def _scepter(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-m', 'scepter_cli', *args], capture_output=True, text=True, timeout=180)


def test_scepter_convert_command_round_trip(files, state, tmp_path):
    recipe = tmp_path / 'recipe.yaml'
    recipe.write_text(yaml.safe_dump({'SOLVER': {'MODEL': {'DIFFUSION_MODEL': TINY_UNET, 'FIRST_STAGE_MODEL': TINY_VAE}}}))
    folder, back = tmp_path / 'hf', tmp_path / 'back.ckpt'
    first = _scepter('convert', str(files['ldm']), str(folder), '--to', 'diffusers', '--use-ema', '--cfg', str(recipe))
    assert first.returncode == 0, first.stderr + first.stdout
    second = _scepter('convert', str(folder), str(back), '--to', 'ldm')
    assert second.returncode == 0, second.stderr + second.stdout
    assert 'wrote diffusers' in first.stdout and 'wrote ldm' in second.stdout
    ema = {k: v for k, v in load_pipeline_state(files['ldm'], use_ema=True).items() if k.startswith(MODEL_PARTS)}
    assert _same(load_pipeline_state(folder), ema)
    assert _same(load_pipeline_state(back), ema)


def test_scepter_convert_rejects_an_unknown_format(files, tmp_path, capsys):
    from scepter_cli.main import main
    assert main(['convert', str(files['ldm']), str(tmp_path / 'x'), '--to', 'onnx']) == 2
    assert "'onnx' is not one of" in capsys.readouterr().err


def test_convert_weights_is_the_command_without_the_cli(files, state, tmp_path):
    from scepter_core.convert.run import convert_weights
    recipe = tmp_path / 'recipe.yaml'
    recipe.write_text(yaml.safe_dump({'SOLVER': {'MODEL': {'DIFFUSION_MODEL': TINY_UNET, 'FIRST_STAGE_MODEL': TINY_VAE}}}))
    done = convert_weights(str(files['ldm']), str(tmp_path / 'hf'), 'diffusers', use_ema=True, cfg_path=str(recipe))
    ema = {k: v for k, v in load_pipeline_state(files['ldm'], use_ema=True).items() if k.startswith(MODEL_PARTS)}
    from scepter_core.convert import drop_ema
    assert done.source_format == 'ldm' and done.merged == []
    assert done.tensors == len(drop_ema(load_pipeline_state(files['ldm'], use_ema=True)))
    assert all(p.exists() and p.is_relative_to(tmp_path / 'hf') for p in done.written)
    assert _same(load_pipeline_state(tmp_path / 'hf'), ema)
    with pytest.raises(ConfigError, match="no DIFFUSION_MODEL or FIRST_STAGE_MODEL block"):
        (tmp_path / 'empty.yaml').write_text('SOLVER: {}\n')
        convert_weights(str(files['ldm']), str(tmp_path / 'x'), 'ldm', cfg_path=str(tmp_path / 'empty.yaml'))

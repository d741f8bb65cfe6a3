"""Adapter files: save / load, `--lora PATH[:SCALE]`, a trained adapter as SOLVER.TUNER, merging."""
from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path

import pytest
import torch
import yaml
from lora_helpers import ROUNDING_ATOL, TINY_MODEL, denoiser_output, lora_blocks
from safetensors import safe_open

from scepter_core.checkpoint import save_state_dict
from scepter_core.errors import CheckpointError
from scepter_core.tuners import (apply_lora_files, apply_tuners, base_model_hash, export_kohya, export_peft_diffusers,
                                 is_tuned, load_adapter, lora_file_format, merge_lora, parse_lora_spec, save_adapter,
                                 tuner_state_dict)


def test_adapter_file_holds_only_adapters_with_config_and_base_hash(tuned, tmp_path: Path):
    path = save_adapter(tuned, tmp_path / 'a.safetensors')
    with safe_open(str(path), 'pt') as f:
        keys, meta = set(f.keys()), f.metadata()
    assert keys == set(tuner_state_dict(tuned))
    assert meta['format'] == 'scepter-lora' and meta['base_hash'] == base_model_hash(tuned)
    configs = json.loads(meta['tuners'])
    assert [configs[a]['R'] for a in ('lora0', 'lora1')] == [4, 2]
    assert configs['lora1']['TARGET_MODULES'] == lora_blocks()[1]['TARGET_MODULES']
    full = sum(v.numel() for k, v in tuned.state_dict().items() if k not in keys)
    assert os.path.getsize(path) < 4 * full / 20  # a small fraction of the model


@pytest.mark.parametrize('export', [save_adapter, export_kohya, export_peft_diffusers])
def test_every_format_loads_into_a_fresh_model_with_the_same_output(tuned, fresh_model, tmp_path: Path, export):
    path = export(tuned, tmp_path / 'lora.safetensors')
    model = fresh_model()
    base = denoiser_output(model)
    names = apply_lora_files(model, [str(path)])
    assert names == ['lora0', 'lora1'] and not any(p.requires_grad for p in model.parameters())
    torch.testing.assert_close(denoiser_output(model), denoiser_output(tuned), atol=1e-6, rtol=0)
    assert (denoiser_output(model) - base).abs().max() > 1e-3


def test_scales_add_up_across_files(tuned, fresh_model, tmp_path: Path):
    ours = save_adapter(tuned, tmp_path / 'a.safetensors')
    kohya = export_kohya(tuned, tmp_path / 'k.safetensors')
    model = fresh_model()
    base = denoiser_output(model)
    apply_lora_files(model, [f'{ours}:0.5', f'{kohya}:0.5'])  # two adapters on the same layers, both active
    torch.testing.assert_close(denoiser_output(model), denoiser_output(tuned), atol=1e-5, rtol=0)
    zero = fresh_model()
    apply_lora_files(zero, [f'{ours}:0'])
    torch.testing.assert_close(denoiser_output(zero), base, atol=ROUNDING_ATOL, rtol=0)


def test_parse_lora_spec():
    assert parse_lora_spec('a/b.safetensors:0.7') == ('a/b.safetensors', 0.7)
    assert parse_lora_spec('a/b.safetensors') == ('a/b.safetensors', 1.0)
    assert parse_lora_spec('ms://org/repo@x.safetensors:-1e-1') == ('ms://org/repo@x.safetensors', -0.1)


def test_merged_model_equals_the_model_with_the_adapter_active(tuned, tmp_path: Path):
    path = save_adapter(tuned, tmp_path / 'a.safetensors')
    active, base_hash = denoiser_output(tuned), base_model_hash(tuned)
    merged = merge_lora(tuned)
    assert not is_tuned(merged) and not any('lora' in k or 'base_layer' in k for k in merged.state_dict())
    torch.testing.assert_close(denoiser_output(merged), active, atol=1e-5, rtol=0)
    assert base_model_hash(merged) != base_hash  # the base weights now include the update
    with pytest.raises(CheckpointError):
        save_adapter(merged, tmp_path / 'nothing.safetensors')
    assert path.is_file()


def test_convert_merge_lora_writes_a_plain_checkpoint(tuned, base_model, fresh_model, tmp_path: Path):
    """`scepter convert BASE DST --merge-lora A:0.5 --merge-lora B:0.5` (two formats): DST has
    the base's tensors only and computes what base + adapters compute."""
    from scepter_cli.main import main
    from scepter_core.registry import MODELS
    base = tmp_path / 'base.safetensors'
    save_state_dict(base_model.state_dict(), base)
    recipe = tmp_path / 'recipe.yaml'
    recipe.write_text(yaml.safe_dump({'SOLVER': {'MODEL': TINY_MODEL}}))
    specs = [f"{save_adapter(tuned, tmp_path / 'a.safetensors')}:0.5",
             f"{export_kohya(tuned, tmp_path / 'k.safetensors')}:0.5"]
    merged = tmp_path / 'merged.safetensors'
    assert main(['--debug', 'convert', str(base), str(merged), '--to', 'scepter', '--cfg', str(recipe),
                 '--merge-lora', specs[0], '--merge-lora', specs[1]]) == 0
    with safe_open(str(merged), 'pt') as f:
        assert set(f.keys()) == set(base_model.state_dict()) and f.metadata()['merged_lora'] == ' '.join(specs)
    assert lora_file_format(merged) is None
    plain = MODELS.build({**copy.deepcopy(TINY_MODEL), 'PRETRAINED_MODEL': str(merged)}).eval()
    expected = fresh_model()
    apply_lora_files(expected, specs)
    assert not is_tuned(plain) and (denoiser_output(expected) - denoiser_output(base_model)).abs().max() > 1e-3
    torch.testing.assert_close(denoiser_output(plain), denoiser_output(expected), atol=1e-5, rtol=0)


def test_a_trained_adapter_as_tuner_path_trains_on(tuned, fresh_model, tmp_path: Path):
    path = save_adapter(tuned, tmp_path / 'a.safetensors')
    model = apply_tuners(fresh_model(), str(path), None)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(tuner_state_dict(model))
    torch.testing.assert_close(denoiser_output(model), denoiser_output(tuned), atol=1e-6, rtol=0)


def test_checkpoint_weights_without_metadata_use_the_recipe_beside_them(tuned, fresh_model, tmp_path: Path):
    """A LoRA run's checkpoint (model.safetensors + config.yaml in a step dir) loads by its dir."""
    step = tmp_path / 'checkpoints' / 'step-000002'
    save_state_dict(tuner_state_dict(tuned), step / 'model.safetensors', metadata={'format': 'scepter'})
    import yaml
    (step / 'config.yaml').write_text(yaml.safe_dump({'SOLVER': {'TUNER': lora_blocks()}}))
    (tmp_path / 'checkpoints' / 'latest').write_text('step-000002\n')
    for where in (tmp_path, tmp_path / 'checkpoints' / 'latest'):
        model = fresh_model()
        load_adapter(model, str(where))
        torch.testing.assert_close(denoiser_output(model), denoiser_output(tuned), atol=1e-6, rtol=0)


def test_another_base_model_warns_and_a_missing_file_is_named(tuned, fresh_model, tmp_path: Path, caplog):
    path = save_adapter(tuned, tmp_path / 'a.safetensors')
    other = fresh_model()
    with torch.no_grad():
        other.model.out[2].weight.add_(1.0)
    with caplog.at_level(logging.WARNING):
        load_adapter(other, str(path), logger=logging.getLogger('tuner_test'))
    assert 'another base model' in caplog.text
    with pytest.raises(CheckpointError, match='nope.safetensors'):
        apply_lora_files(fresh_model(), [str(tmp_path / 'nope.safetensors:0.5')])


def test_lora_file_format_tells_adapters_from_whole_models(tuned, base_model, tmp_path: Path):
    assert lora_file_format(save_adapter(tuned, tmp_path / 'a.safetensors')) == 'ours'
    assert lora_file_format(export_kohya(tuned, tmp_path / 'k.safetensors')) == 'kohya'
    assert lora_file_format(export_peft_diffusers(tuned, tmp_path / 'd.safetensors')) == 'diffusers'
    save_state_dict(base_model.state_dict(), tmp_path / 'full.safetensors')
    assert lora_file_format(tmp_path / 'full.safetensors') is None
    assert lora_file_format(tmp_path / 'missing.safetensors') is None

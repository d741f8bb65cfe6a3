"""examples/tiny_shapes_lora.yaml: validates, and trains from the tiny default model's checkpoint
(here a freshly initialised stand-in at the path the recipe expects), adapters only."""
from __future__ import annotations

from pathlib import Path

import torch
from lora_helpers import fill_zero_tensors
from safetensors import safe_open

from scepter_core.config import Config
from scepter_core.launch import run_worker
from scepter_core.registry import MODELS
from scepter_core.solvers.state import write_checkpoint
from scepter_core.tuners import tuner_state_dict
from scepter_core.validate import validate_recipe

EXAMPLE = Path(__file__).resolve().parents[2] / 'examples' / 'tiny_shapes_lora.yaml'


def test_tiny_shapes_lora_example_trains_adapters_from_the_base_checkpoint(tmp_path: Path, monkeypatch):
    monkeypatch.setenv('TINY_WORK_DIR', str(tmp_path))
    cfg = Config.load(EXAMPLE)
    assert validate_recipe(cfg) == []
    assert cfg.SOLVER.MODEL.PRETRAINED_MODEL == f'{tmp_path}/tiny_shapes/checkpoints/latest'
    assert 'diamond' in cfg.SOLVER.TRAIN_DATA.SHAPES and len(cfg.SOLVER.TUNER) == 2
    # the base run's checkpoint, where examples/tiny_shapes.yaml leaves it
    base_cfg = Config(cfg.SOLVER.MODEL.to_dict())
    base_cfg.PRETRAINED_MODEL = None
    torch.manual_seed(0)
    stand_in = MODELS.build(base_cfg)
    fill_zero_tensors(stand_in)
    base = stand_in.state_dict()
    write_checkpoint(tmp_path / 'tiny_shapes' / 'checkpoints', 2500, base, None, '')

    run = Config.load(EXAMPLE, ['SOLVER.MAX_STEPS=2', 'SOLVER.TRAIN_DATA.BATCH_SIZE=2',
                                'SOLVER.TRAIN_HOOKS=[{NAME: BackwardHook}, {NAME: CheckpointHook, INTERVAL: 2}]'])
    solver = run_worker(run, mode='train')
    model = solver.unwrapped_model
    adapters = tuner_state_dict(model)
    moved = {k.split('.')[0] for k, v in adapters.items() if '.lora_B.' in k and v.abs().sum() > 0}
    assert moved == {'model', 'cond_stage_model'}
    frozen = {k.replace('.base_layer.', '.'): v for k, v in model.named_parameters() if k not in adapters}
    assert len(frozen) > 400 and all(torch.equal(v, base[k]) for k, v in frozen.items())
    saved = tmp_path / 'tiny_shapes_lora' / 'checkpoints' / 'step-000002' / 'model.safetensors'
    with safe_open(str(saved), 'pt') as f:
        assert set(f.keys()) == set(adapters)

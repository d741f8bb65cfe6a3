"""`scepter train`, `scepter test` and `scepter infer` through real subprocesses."""
from __future__ import annotations

import json
from pathlib import Path

import yaml
from PIL import Image

from .conftest import run_cli


def test_train_test_infer_write_their_outputs(recipe, tmp_path: Path):
    cfg = recipe(steps=4, TRAIN_HOOKS=[
        {'NAME': 'BackwardHook'}, {'NAME': 'LogHook', 'LOG_INTERVAL': 2},
        {'NAME': 'CheckpointHook', 'INTERVAL': 2, 'KEEP_LAST': 1},
        {'NAME': 'ProbeDataHook', 'PROB_INTERVAL': 2, 'PROMPTS': ['a red circle on a white background']},
        {'NAME': 'TensorboardLogHook', 'LOG_INTERVAL': 1}])
    proc = run_cli('train', '--cfg', str(cfg))
    work = tmp_path / 'work'
    log = (work / 'std_log.txt').read_text()
    assert 'step 4/4' in log and 'loss' in log and 'img/s' in log
    # the checkpoint tree: only the newest step is kept, `latest` points at it
    ckpts = work / 'checkpoints'
    assert (ckpts / 'latest').read_text().strip() == 'step-000004'
    assert sorted(p.name for p in ckpts.glob('step-*')) == ['step-000004']
    step = ckpts / 'step-000004'
    assert {p.name for p in step.iterdir()} == {'model.safetensors', 'training_state.pt', 'config.yaml'}
    from safetensors import safe_open
    with safe_open(step / 'model.safetensors', 'pt') as f:
        keys = list(f.keys())
        assert f.metadata()['step'] == '4'
    assert any(k.startswith('model.') for k in keys) and any(k.startswith('cond_stage_model.transformer.') for k in keys)
    assert yaml.safe_load((work / 'config.yaml').read_text())['SOLVER']['MAX_STEPS'] == 4
    # probes: PNG grids with prompts, meta.json, index.html
    probe = work / 'probe' / 'step-000002'
    assert Image.open(probe / 'grid.png').format == 'PNG'
    assert json.loads((probe / 'meta.json').read_text())['samples'][0]['prompt'] == 'a red circle on a white background'
    assert 'step-000004/grid.png' in (work / 'probe' / 'index.html').read_text()
    # real TensorBoard event files with the logged scalars
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(work / 'tensorboard'))
    events.Reload()
    assert [e.step for e in events.Scalars('loss')] == [1, 2, 3, 4]
    assert Image.open(work / 'loss_curve.png').size[0] > 100
    assert 'done' in proc.stdout

    # scepter test: images, grid and metrics.json
    run_cli('test', '--cfg', str(cfg), '--pretrained-model', str(ckpts / 'latest'),
            '--set', 'SOLVER.METRICS=[{NAME: PromptAdherence}]')
    test_dir = work / 'test'
    metrics = json.loads((test_dir / 'metrics.json').read_text())
    assert 'prompt_color_acc' in metrics and 0.0 <= metrics['prompt_color_acc'] <= 1.0
    assert len(list(test_dir.glob('0*.png'))) >= 3 and (test_dir / 'grid.png').is_file()

    # scepter infer: finds the recipe beside the checkpoint, writes one PNG per image and a grid
    out = tmp_path / 'infer'
    proc = run_cli('infer', '--pretrained_model', str(work), '--prompt', 'a green square on a black background',
                   '--num_samples', '2', '--sample_steps', '2', '--out', str(out))
    pngs = sorted(out.glob('0*.png'))
    assert len(pngs) == 2 and Image.open(pngs[0]).size == (16, 16)
    assert str(out / 'grid.png') in proc.stdout.replace('\n', '')

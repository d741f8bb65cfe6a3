"""The default example's recipes, shortened, really learn: prompt adherence on held-out
colour/shape prompts (read back from each sample by the deterministic scorer) rises between
the untrained and the trained model, through `scepter train` and `scepter test`, and the
periodic evaluation logs the same metric to TensorBoard."""
from __future__ import annotations

import json
from pathlib import Path

from .conftest import ROOT, run_cli

VAE = str(ROOT / 'examples' / 'tiny_shapes_vae.yaml')
LDM = str(ROOT / 'examples' / 'tiny_shapes.yaml')


def _test_metrics(work: Path, *extra: str) -> dict:
    run_cli('test', '--cfg', LDM, '--set', 'SOLVER.TEST_DATA.REPEATS=2', *extra, env={'TINY_WORK_DIR': str(work)})
    return json.loads((work / 'tiny_shapes' / 'test' / 'metrics.json').read_text())


def test_prompt_adherence_rises_with_training(tmp_path: Path):
    env = {'TINY_WORK_DIR': str(tmp_path)}
    run_cli('train', '--cfg', VAE, '--set', 'SOLVER.MAX_STEPS=500', '--set', 'SOLVER.TRAIN_HOOKS.2.INTERVAL=500', env=env)
    untrained = _test_metrics(tmp_path)
    run_cli('train', '--cfg', LDM, '--set', 'SOLVER.MAX_STEPS=500', '--set', 'SOLVER.EVAL_INTERVAL=250',
            '--set', 'SOLVER.TRAIN_HOOKS.2.VAL_INTERVAL=250', '--set', 'SOLVER.TRAIN_HOOKS.3.PROB_INTERVAL=500',
            '--set', 'SOLVER.TRAIN_HOOKS.4.INTERVAL=500', env=env)
    trained = _test_metrics(tmp_path, '--pretrained-model', str(tmp_path / 'tiny_shapes'))

    assert untrained['step'] == 0 and trained['step'] == 500
    assert trained['prompt_bg_acc'] >= untrained['prompt_bg_acc'] + 0.3, (untrained, trained)
    assert trained['prompt_color_acc'] > untrained['prompt_color_acc'], (untrained, trained)

    # EVAL_INTERVAL: the same metric during training, in TensorBoard and per-step metrics.json
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(tmp_path / 'tiny_shapes' / 'tensorboard'))
    events.Reload()
    assert [e.step for e in events.Scalars('eval/prompt_bg_acc')] == [250, 500]
    at_500 = json.loads((tmp_path / 'tiny_shapes' / 'eval' / 'step-000500' / 'metrics.json').read_text())
    assert at_500['step'] == 500 and 0.0 <= at_500['prompt_all_acc'] <= 1.0

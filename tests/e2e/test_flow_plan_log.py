"""`scepter train` logs the memory plan of a flow-transformer run at its start: the same lines,
with the same numbers, that `scepter model info --cfg RECIPE` prints for the same recipe and
--set overrides. The run: a tiny FLUX LoRA, one step on the CPU, its frozen base in int8 with
its blocks offloaded and checkpointed (the recipe's row of the table is marked)."""
from __future__ import annotations

from pathlib import Path

import pytest
from models.tiny_flow import tiny_flux_network

from .conftest import run_cli, tiny_recipe, write_recipe

LORA = {'NAME': 'SwiftLoRA', 'R': 4, 'LORA_ALPHA': 4,
        'TARGET_MODULES': r'model\.(double_blocks|single_blocks)\.\d+\.(.+\.)?(qkv|proj|linear1|linear2)'}


def flux_lora_recipe(tmp: Path) -> Path:
    model = tiny_flux_network(tmp, IMAGE_SIZE=[32, 32])
    model['DIFFUSION_MODEL'].update(USE_GRAD_CHECKPOINT=True, OFFLOAD_BLOCKS=True)
    cfg = tiny_recipe(tmp / 'work', steps=4, MODEL=model, TUNER=[LORA], QUANTIZE_BASE='int8',
                      TRAIN_HOOKS=[{'NAME': 'BackwardHook'}, {'NAME': 'LogHook', 'LOG_INTERVAL': 1}])
    cfg['SOLVER']['TRAIN_DATA']['IMAGE_SIZE'] = 32
    del cfg['SOLVER']['TEST_DATA']
    return write_recipe(tmp / 'flux_lora.yaml', cfg)


@pytest.mark.timeout(900)
def test_train_start_logs_the_plan_model_info_prints_for_the_same_recipe_and_sets(tmp_path: Path):
    recipe = flux_lora_recipe(tmp_path)
    sets = ['--set', 'SOLVER.MAX_STEPS=1', '--set', 'SOLVER.TRAIN_DATA.BATCH_SIZE=2']
    printed = run_cli('model', 'info', '--cfg', str(recipe), *sets, timeout=400).stdout.splitlines()
    run_cli('train', '--cfg', str(recipe), *sets, timeout=400)
    log = (tmp_path / 'work' / 'std_log.txt').read_text()
    assert 'batch 2, 32x32 px' in printed[0]  # the --set reached the plan
    marked = [line for line in printed if line.endswith('<- this recipe')]
    assert len(marked) == 1 and marked[0].split()[2:5] == ['int8', 'on', 'on']
    rows = {tuple(line.split()[1:5]): [float(v) for v in line.split()[5:9]] for line in printed[2:16] if line.startswith('LoRA')}
    plain, marked_row = rows[('r4', 'float32', 'off', 'on')], rows[('r4', 'int8', 'on', 'on')]
    assert 0 < marked_row[0] < plain[0] and marked_row[1:3] == plain[1:3]  # the switches cut weights only
    assert len(printed) == 17  # title, header, 14 switch rows, the frozen parts
    logged = log.splitlines()  # the block's first line follows the logger's time and level
    missing = [line for line in printed if not any(entry.endswith(line) for entry in logged)]
    assert not missing, missing
    assert log.count('planned peak training memory') == 1 and 'QUANTIZE int8' in log

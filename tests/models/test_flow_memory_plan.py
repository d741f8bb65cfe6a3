"""The memory plan of a flow-transformer run (models/memory_plan.py) against a real run: a FLUX
recipe trains two steps through `scepter train` in a fresh process, whose peak RSS (VmHWM) is
read at its end. What the plan covers (the transformer's weights, gradients, optimizer state and
activations) is measured as the difference to the same run with a near-empty transformer, so the
interpreter, torch and the data pipeline cancel out. Within 15%, for a full fine-tune and for a
LoRA with gradient checkpointing."""
from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from e2e.conftest import tiny_recipe
from models.tiny_flow import TINY_FLUX, tiny_flux_network

from scepter_core.models.memory_plan import recipe_plan

ROOT = Path(__file__).resolve().parents[2]
WIDE = {'HIDDEN_SIZE': 384, 'NUM_HEADS': 4, 'AXES_DIM': [16, 40, 40], 'DEPTH': 2, 'DEPTH_SINGLE_BLOCKS': 4}
EMPTY = {'HIDDEN_SIZE': 16, 'NUM_HEADS': 1, 'AXES_DIM': [4, 6, 6], 'DEPTH': 0, 'DEPTH_SINGLE_BLOCKS': 0}
LORA = {'NAME': 'SwiftLoRA', 'R': 8, 'LORA_ALPHA': 8,
        'TARGET_MODULES': r'model\.(double_blocks|single_blocks)\.\d+\.(.+\.)?(qkv|proj|linear1|linear2)'}
SWITCHES = {'full': ({}, None), 'lora_checkpointed': ({'USE_GRAD_CHECKPOINT': True}, [LORA])}
# glibc raises its mmap threshold as large blocks are freed, and from then on keeps freed tensors
# in the heap: RSS would follow the heap's fragmentation, not the live tensors. A fixed threshold
# returns each large tensor's pages when it is freed (as a caching allocator reuses its blocks).
MALLOC = {'MALLOC_MMAP_THRESHOLD_': '131072'}
# The interpreter's own peak at the end of a run, read by the process itself.
RUN = ('import re, sys; from scepter_cli.main import main; rc = main(sys.argv[1:]); '
       'print("VmHWM", re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1)); sys.exit(rc)')


def recipe(tmp: Path, name: str, backbone: dict, tuner: list | None) -> dict:
    model = tiny_flux_network(tmp)
    model['DIFFUSION_MODEL'].update(backbone)
    cfg = tiny_recipe(tmp / name, steps=2, MODEL=model, OPTIMIZER={'NAME': 'AdamW', 'LEARNING_RATE': 1e-4},
                      TRAIN_HOOKS=[{'NAME': 'BackwardHook'}, {'NAME': 'LogHook', 'LOG_INTERVAL': 1}])
    cfg['SOLVER']['TRAIN_DATA'].update(IMAGE_SIZE=128, BATCH_SIZE=2)
    cfg['SOLVER']['MODEL']['IMAGE_SIZE'] = [128, 128]
    del cfg['SOLVER']['TEST_DATA']
    if tuner:
        cfg['SOLVER']['TUNER'] = tuner
    return cfg


def peak_rss(tmp: Path, cfg: dict, name: str) -> int:
    path = tmp / f'{name}.yaml'
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, '-c', RUN, 'train', '--cfg', str(path)], capture_output=True, text=True,
                          timeout=900, cwd=ROOT, env={'SCEPTER_PROGRESS': '0', 'OMP_NUM_THREADS': '1', **MALLOC,
                                                      'HF_HUB_OFFLINE': '1', 'PATH': '/usr/bin:/bin',
                                                      'PYTHONPATH': str(ROOT) + ':' + str(ROOT / 'tests')})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return int(re.search(r'VmHWM (\d+)', proc.stdout).group(1)) * 1024


@pytest.fixture(scope='module')
def empty_run(tmp_path_factory) -> tuple[int, int]:
    """(planned, measured) bytes of the run with a near-empty transformer, for every case."""
    tmp = tmp_path_factory.mktemp('empty')
    empty = recipe(tmp, 'empty', EMPTY, None)
    return recipe_plan(copy.deepcopy(empty))['peak'], peak_rss(tmp, empty, 'empty')


@pytest.mark.parametrize('switch', list(SWITCHES))
def test_planned_peak_memory_matches_the_measured_rss_of_a_real_run(tmp_path, switch, empty_run):
    backbone, tuner = SWITCHES[switch]
    wide = recipe(tmp_path, 'wide', {**WIDE, **backbone}, tuner)
    planned = recipe_plan(copy.deepcopy(wide))['peak'] - empty_run[0]
    measured = peak_rss(tmp_path, wide, 'wide') - empty_run[1]
    print(json.dumps({'switch': switch, 'planned_mib': planned / 2 ** 20, 'measured_mib': measured / 2 ** 20}))
    assert planned > 20 * empty_run[0]  # the transformer's part dominates what is compared
    assert abs(measured - planned) <= 0.15 * planned, (measured / 2 ** 20, planned / 2 ** 20)


@pytest.mark.timeout(300)
def test_the_switch_table_has_a_row_for_each_combination_with_what_it_saves():
    from scepter_core.models.memory_plan import Switches, switch_table
    from scepter_core.registry import BACKBONES
    block = {**TINY_FLUX, **WIDE}
    base = Switches(dtype='bfloat16', batch=2, size=(128, 128), text_tokens=12)
    rows = switch_table(block, 1000, base, 4, 2, 8)
    by = {(r['switches']['lora_rank'], r['switches']['quantize'], r['switches']['offload'],
           r['switches']['checkpointing']): r for r in rows}
    assert len(by) == len(rows) == 14
    # the blocks' frozen bf16 bytes, from the built model: offload (with checkpointing) keeps one block's
    model = BACKBONES.build(dict(block)).to(torch.bfloat16)
    blocks = [sum(p.numel() * 2 for p in b.parameters()) for b in [*model.double_blocks, *model.single_blocks]]
    for quantize in (None, 'int8', 'fp8'):
        plain, offloaded = by[(8, quantize, False, True)], by[(8, quantize, True, True)]
        if quantize is None:
            assert plain['weights'] - offloaded['weights'] == sum(blocks) - max(blocks)
        else:
            assert offloaded['weights'] < plain['weights'] < by[(8, None, False, True)]['weights']
        # without checkpointing autograd keeps every block's fetched weights: nothing saved
        assert by[(8, quantize, True, False)]['peak'] == by[(8, quantize, False, False)]['peak']
    assert by[(8, 'fp8', True, True)]['peak'] == by[(8, 'int8', True, True)]['peak']  # both 1 byte + scales
    for r in rows:
        s = r['switches']
        reference = by[(s['lora_rank'], None, False, False)]
        assert r['saves'] == (None if r is reference else reference['peak'] - r['peak'])
    assert by[(8, 'int8', True, True)]['saves'] > by[(8, 'int8', False, True)]['saves'] > 0

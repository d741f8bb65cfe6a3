"""ProbeDataHook: PNG grids, single images, meta.json and index.html every PROB_INTERVAL steps."""
from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from tests.solvers.tiny_net import train_tiny


def test_probes_at_interval_and_end_with_given_prompts(tmp_path: Path):
    train_tiny(tmp_path, 3, [{'NAME': 'ProbeDataHook', 'PROB_INTERVAL': 2, 'PROMPTS': ['a red circle', 'a square']}])
    root = tmp_path / 'probe'
    assert sorted(d.name for d in root.glob('step-*')) == ['step-000002', 'step-000003']
    meta = json.loads((root / 'step-000002' / 'meta.json').read_text())
    assert meta['step'] == 2 and [s['prompt'] for s in meta['samples']] == ['a red circle', 'a square']
    assert Image.open(root / 'step-000002' / '001.png').size == (16, 16)
    assert Image.open(root / 'step-000002' / 'grid.png').size[0] >= 2 * 128
    index = (root / 'index.html').read_text()
    assert index.index('step-000003') < index.index('step-000002')  # newest first


def test_prompts_come_from_the_training_data_when_not_given(tmp_path: Path):
    solver = train_tiny(tmp_path, 1, [{'NAME': 'ProbeDataHook', 'PROB_INTERVAL': 0, 'NUM_SAMPLES': 3}])
    hook = solver.hooks['train'][0]
    assert len(hook.prompts) == 3 and all(isinstance(p, str) and p for p in hook.prompts)
    meta = json.loads((tmp_path / 'probe' / 'step-000001' / 'meta.json').read_text())
    assert [s['prompt'] for s in meta['samples']] == hook.prompts

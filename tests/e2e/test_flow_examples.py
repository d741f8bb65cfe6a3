"""The FLUX / SD3.5 examples validate through the CLI, and each states the planned memory of its
switches (`scepter model info --plan`) in its comments."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from .conftest import ROOT, run_cli

EXAMPLES = {'flux1_dev_1024_lora': 'flux-dev', 'flux1_schnell_lora': 'flux-schnell',
            'sd35_medium_lora': 'sd35-medium', 'sd35_medium_full': 'sd35-medium'}


@pytest.mark.parametrize('name', list(EXAMPLES))
def test_flow_example_validates_and_states_its_plan(name: str):
    path = ROOT / 'examples' / f'{name}.yaml'
    proc = run_cli('config', 'validate', '--cfg', str(path))
    assert 'is valid' in proc.stdout
    text = Path(path).read_text()
    assert f'scepter model info --family {EXAMPLES[name]}' in text and 'GiB' in text
    solver = yaml.safe_load(text)['SOLVER']
    tuned = bool(solver.get('TUNER'))
    assert tuned == ('lora' in name)
    backbone = solver['MODEL']['DIFFUSION_MODEL']
    if name != 'flux1_dev_1024_lora':  # the newer examples: checkpointing on, as their plans assume
        assert backbone.get('USE_GRAD_CHECKPOINT') or backbone.get('USE_CHECKPOINT')

"""Scepter's own SD2.1, SDXL, FLUX and SD3 recipes, unmodified, validate through the CLI (and
so do our SDXL examples)."""
from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import ROOT, run_cli
from .sd_fixtures import RECIPES

SD21 = [RECIPES / f'stable_diffusion_2.1_{kind}.yaml' for kind in ('512', '512_lora', '768', '768_lora')]
SDXL = [RECIPES / f'stable_diffusion_xl_1024{kind}.yaml' for kind in ('', '_lora', '_textlora')]
FLOW = [RECIPES / f'{name}.yaml' for name in ('dit_flux1.0_dev_1024_lora', 'dit_flux1.0_schnell_1024_lora',
                                            'dit_sd3_1024', 'dit_sd3_1024_lora')]
EXAMPLES = [ROOT / 'examples' / f'sdxl_1024_{kind}.yaml' for kind in ('full', 'lora')] + \
    [ROOT / 'examples' / 'flux1_dev_1024_lora.yaml']


@pytest.mark.parametrize('path', SD21 + SDXL + FLOW + EXAMPLES, ids=lambda p: p.stem)
def test_recipe_validates_as_it_is(path: Path):
    proc = run_cli('config', 'validate', '--cfg', str(path))
    assert 'is valid' in proc.stdout

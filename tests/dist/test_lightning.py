"""ENV.USE_PL: the solver's loop under a Lightning Trainer (2 CPU processes, DDP by
Lightning): ranks agree, checkpoints in our format, and the same training as our DDP."""
from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import load_file

from scepter_core.lightning_runner import lightning_available

from .conftest import check_ranks_agree, dist_recipe, scepter, weights_hash

pytestmark = pytest.mark.skipif(not lightning_available(),
                                reason="Lightning not installed (pip install 'scepter-forge[lightning]')")


def test_lightning_trains_the_tiny_recipe(spawn_run: Path, tmp_path: Path):
    proc = scepter(tmp_path, 'train', '--cfg', str(dist_recipe(tmp_path, 2, env={'USE_PL': True})))
    assert proc.returncode == 0, proc.stderr[-3000:]
    tr = check_ranks_agree(tmp_path / 'work', [1, 2])
    step = tmp_path / 'work' / 'checkpoints' / 'step-000002'
    assert sorted(p.name for p in step.iterdir()) == ['config.yaml', 'model.safetensors', 'training_state.pt']
    assert weights_hash(step) == tr[0][1]['weights']
    ours = load_file(str(spawn_run / 'work' / 'checkpoints' / 'step-000002' / 'model.safetensors'))
    pl = load_file(str(step / 'model.safetensors'))
    assert max((ours[k].float() - pl[k].float()).abs().max().item() for k in ours) < 1e-4

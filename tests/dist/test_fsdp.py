"""FSDP (SOLVER.USE_FSDP) on CPU with gloo, 2 workers: ranks agree, the checkpoint holds
the full weights (close to the DDP run's) and resumes in a single process."""
from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file

from scepter_core.config import Config
from scepter_core.launch import run_worker
from tests.e2e.conftest import tiny_recipe

from .conftest import check_ranks_agree, dist_recipe, scepter, weights_hash


def test_fsdp_trains_and_checkpoint_loads_in_one_process(spawn_run: Path, tmp_path: Path):
    recipe = dist_recipe(tmp_path, 2, solver={'USE_FSDP': True, 'SHARDING_STRATEGY': 'full_shard'})
    proc = scepter(tmp_path, 'train', '--cfg', str(recipe))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'FSDP full_shard' in (tmp_path / 'work' / 'std_log.txt').read_text()
    tr = check_ranks_agree(tmp_path / 'work', [1, 2])
    step = tmp_path / 'work' / 'checkpoints' / 'step-000002'
    assert weights_hash(step) == tr[0][1]['weights']  # the whole model, gathered from the shards
    fsdp, ddp = load_file(str(step / 'model.safetensors')), load_file(str(spawn_run / 'work' / 'checkpoints' /
                                                                          'step-000002' / 'model.safetensors'))
    assert fsdp.keys() == ddp.keys()
    assert max((fsdp[k].float() - ddp[k].float()).abs().max().item() for k in fsdp) < 1e-4
    assert len(list((tmp_path / 'work' / 'probe' / 'step-000002').glob('0*.png'))) == 3  # probes under FSDP
    # one process (no FSDP there) resumes from it: weights and the optimizer state load
    cfg = Config(tiny_recipe(tmp_path / 'single', 3, RESUME_FROM=str(step), USE_FSDP=True))
    cfg.SOLVER.MODEL.USE_EMA = True
    solver = run_worker(cfg, 'train')
    assert solver.step == 3 and len(solver.optimizer.state_dict()['state']) > 100

"""Helpers for the multi-process tests: 2 CPU workers over gloo training the tiny recipe.

TRACE_CODE is user code loaded with `--import` (so it also proves that spawned workers
import the parent's user code): a dataset that records which records each rank read and a
hook that writes, after every optimizer step, the rank, the records read since the last
step and a hash of all the weights to WORK_DIR/trace-rank{R}.jsonl."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT, TO_TENSOR, tiny_recipe, write_recipe

TRACE_CODE = '''
import hashlib, json, os, signal
from scepter_core import DATASETS, HOOKS
from scepter_core.data.shapes import ShapesDataset
from scepter_core.env import we
from scepter_core.hooks.base import BaseHook

SEEN = []


@DATASETS.register_class()
class TracedShapes(ShapesDataset):
    def _get(self, index):
        SEEN.append(int(index))  # NUM_WORKERS 0: the loader reads in this process
        return super()._get(index)


@HOOKS.register_class()
class TraceHook(BaseHook):
    para_dict = {'DIE_RANK': {'value': -1, 'description': ''}, 'DIE_STEP': {'value': -1, 'description': ''},
                 'DIE_HOW': {'value': 'raise', 'description': 'raise | kill'}}

    def before_solve(self, solver):
        with open(os.path.join(solver.work_dir, f'pid-rank{we.rank}'), 'w') as f:
            f.write(str(os.getpid()))

    def after_iter(self, solver):
        st = solver.state
        if not st.is_step_end:
            return
        h = hashlib.sha256()
        for k, v in sorted(solver.unwrapped_model.state_dict().items()):
            v = v.full_tensor() if hasattr(v, 'full_tensor') else v  # FSDP: the whole tensor
            h.update(k.encode())
            h.update(v.detach().float().cpu().contiguous().numpy().tobytes())
        rec = {'step': st.step, 'rank': we.rank, 'world': we.world_size, 'indices': list(SEEN),
               'weights': h.hexdigest(), 'val_loss': st.log_values.get('val_loss')}
        SEEN.clear()
        with open(os.path.join(solver.work_dir, f'trace-rank{we.rank}.jsonl'), 'a') as f:
            f.write(json.dumps(rec) + '\\n')
        if we.rank == self.cfg.DIE_RANK and st.step == self.cfg.DIE_STEP:
            if self.cfg.DIE_HOW == 'kill':
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f'rank {we.rank} breaks down on purpose at step {st.step}')
'''


PROBE_PROMPTS = ['a red circle on a white background', 'a green square on a black background',
                 'a yellow triangle on a gray background']


def dist_recipe(tmp: Path, steps: int, processes: int = 2, env: dict | None = None, solver: dict | None = None,
                **trace: object) -> Path:
    """The tiny recipe on TracedShapes with the TraceHook, for `processes` CPU workers, with
    gradient clipping and EMA weights (model_ema, traced with the rest); a probe of 3 prompts,
    an evaluation of the 3 test prompts and a validation loss at step 2."""
    cfg = tiny_recipe(tmp / 'work', steps)
    cfg['ENV'].update({'NUM_PROCESSES': processes, 'BACKEND': 'gloo', 'TIMEOUT_MINUTES': 2, **(env or {})})
    s = cfg['SOLVER']
    s['MODEL']['USE_EMA'] = True
    s['TRAIN_HOOKS'][0]['GRADIENT_CLIP'] = 1.0
    s['TRAIN_HOOKS'].append({'NAME': 'ModelEmaHook', 'DECAY': 0.9})
    s['TRAIN_DATA'].update({'NAME': 'TracedShapes', 'NUM_WORKERS': 0})
    s['EVAL_DATA'], s['EVAL_INTERVAL'] = dict(s['TEST_DATA']), 2
    s['TRAIN_HOOKS'].insert(2, {'NAME': 'ProbeDataHook', 'PROB_INTERVAL': 2, 'SAVE_LAST': False,
                                'PROMPTS': PROBE_PROMPTS})
    # a validation loss over each rank's own shard of separate (untraced) data, averaged over ranks
    s['TRAIN_HOOKS'].append({'NAME': 'ValLossHook', 'VAL_INTERVAL': 2, 'NUM_BATCHES': 1,
                             'DATA': {**s['TEST_DATA'], 'MODE': 'train', 'NUM_SAMPLES': 16, 'TRANSFORMS': TO_TENSOR}})
    s['TRAIN_HOOKS'].append({'NAME': 'TraceHook', **trace})
    s.update(solver or {})
    (tmp / 'trace_code.py').write_text(TRACE_CODE)
    return write_recipe(tmp / f'recipe-{processes}.yaml', cfg)


def weights_hash(step_dir: Path) -> str:
    """The TraceHook's hash, computed from a checkpoint's model.safetensors."""
    import hashlib
    from safetensors.torch import load_file
    h = hashlib.sha256()
    for k, v in sorted(load_file(str(step_dir / 'model.safetensors')).items()):
        h.update(k.encode())
        h.update(v.float().contiguous().numpy().tobytes())
    return h.hexdigest()


def check_ranks_agree(work: Path, steps: list[int], world: int = 2) -> dict[int, list[dict]]:
    """Every rank traced every step, read records no other rank read, and held the same weights."""
    tr = traces(work)
    assert sorted(tr) == list(range(world)), tr.keys()
    for rank, recs in tr.items():
        assert [r['step'] for r in recs] == steps and all(r['world'] == world for r in recs), (rank, recs)
    for i, step in enumerate(steps):
        assert len({tr[r][i]['weights'] for r in tr}) == 1, f'ranks disagree on the weights after step {step}'
        seen = [set(tr[r][i]['indices']) for r in tr]
        assert all(len(s) == 4 for s in seen) and not set.intersection(*seen), (step, seen)
    return tr


@pytest.fixture(scope='session')
def spawn_run(tmp_path_factory) -> Path:
    """`scepter train` of the traced tiny recipe, 2 steps, 2 CPU workers (spawn launcher);
    the directory holds recipe-2.yaml, trace_code.py and work/."""
    tmp = tmp_path_factory.mktemp('spawn')
    proc = scepter(tmp, 'train', '--cfg', str(dist_recipe(tmp, 2)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp


def traces(work: Path) -> dict[int, list[dict]]:
    """rank -> the TraceHook records of that rank, in order."""
    out = {}
    for f in sorted(work.glob('trace-rank*.jsonl')):
        out[int(f.stem.removeprefix('trace-rank'))] = [json.loads(line) for line in f.read_text().splitlines()]
    return out


def cli_env() -> dict[str, str]:
    env = {**os.environ, 'SCEPTER_PROGRESS': '0', 'PYTHONPATH': str(ROOT)}
    for key in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT', 'TORCHELASTIC_RUN_ID'):
        env.pop(key, None)  # the launchers read these: none may leak in from the test runner
    return env


def scepter(tmp: Path, *args: str, torchrun: int = 0, timeout: int = 240) -> subprocess.CompletedProcess:
    """`scepter ARGS --import trace_code.py`, under `torchrun --nproc_per_node N` when torchrun=N."""
    cmd = [sys.executable, '-m', 'scepter_cli', *args, '--import', str(tmp / 'trace_code.py')]
    if torchrun:  # `python -m torch.distributed.run` is the `torchrun` command
        cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', str(torchrun),
               '-m', 'scepter_cli', *args, '--import', str(tmp / 'trace_code.py'), '--launcher', 'torchrun']
    return subprocess.run(cmd, cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=timeout)

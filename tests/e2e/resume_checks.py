"""What the resume tests share: one `scepter train` of an example with --set overrides, and the
bit-for-bit comparison of two checkpoints (weights, optimizer, schedule, hooks, every RNG
stream, the counters)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from .conftest import ROOT, run_cli


def train_example(example: str, work: Path, steps: int, sets: list[str], env: dict[str, str],
                  resume: bool = False, cwd: Path | None = None) -> str:
    """`scepter train --cfg examples/EXAMPLE.yaml --work-dir WORK --set SOLVER.MAX_STEPS=STEPS
    --set ...` (and `--resume latest`); returns what it printed."""
    args = ['train', '--cfg', str(ROOT / 'examples' / f'{example}.yaml'), '--work-dir', str(work),
            '--set', f'SOLVER.MAX_STEPS={steps}']
    for s in sets:
        args += ['--set', s]
    if resume:
        args += ['--resume', 'latest']
    proc = run_cli(*args, env={'OMP_NUM_THREADS': '1', **env}, timeout=900, cwd=cwd)
    return proc.stdout + proc.stderr


def step_dir(work: Path, step: int) -> Path:
    return work / 'checkpoints' / f'step-{step:06d}'


def assert_same_tree(a: Any, b: Any, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same_tree(a[k], b[k], f'{where}.{k}')
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tree(x, y, f'{where}[{i}]')
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), where
    else:
        assert a == b, f'{where}: {a!r} != {b!r}'


def assert_same_checkpoint(a: Path, b: Path, step: int) -> None:
    """Two step directories of `step` hold the same weights and training state, bit for bit."""
    wa, wb = load_file(a / 'model.safetensors'), load_file(b / 'model.safetensors')
    assert wa.keys() == wb.keys()
    differ = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not differ, f'{len(differ)} of {len(wa)} tensors differ, e.g. {differ[:4]}'
    sa, sb = (torch.load(d / 'training_state.pt', weights_only=True) for d in (a, b))
    assert sa['step'] == step and sa.keys() == sb.keys()
    assert_same_tree(sa, sb, 'training_state')  # optimizer, schedule, hooks, RNG of every rank, counters


def resume_in_two(example: str, work: Path, k: int, n: int, sets: list[str], env: dict[str, str],
                  cwd: Path | None = None) -> None:
    """k steps, then `--resume latest` to n: the resume says where it starts and warns of nothing."""
    train_example(example, work, k, sets, env, cwd=cwd)
    out = train_example(example, work, n, sets, env, resume=True, cwd=cwd)
    assert f'resuming at step {k}' in out
    assert 'WARNING' not in out, out

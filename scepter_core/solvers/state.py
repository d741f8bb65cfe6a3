"""Checkpoint trees: atomic directories of weights (safetensors) and training state.

Layout: WORK_DIR/checkpoints/step-000100/{model.safetensors, training_state.pt, config.yaml}
and WORK_DIR/checkpoints/latest (a one-line pointer). A directory is written under a
temporary name, fsynced, then renamed: a crash mid-save never leaves a broken checkpoint."""
from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import LATEST, WEIGHTS, find_step_dir, fsync_dir, save_state_dict
from ..errors import CheckpointError

STATE = 'training_state.pt'


def step_dir_name(step: int) -> str:
    return f'step-{step:06d}'


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {'python': random.getstate(), 'torch': torch.get_rng_state(),
             'numpy': (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:])}
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_tuples(state['python']))
    torch.set_rng_state(state['torch'])
    name, keys, *rest = state['numpy']
    np.random.set_state((name, keys.numpy(), *rest))
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def _tuples(x: Any) -> Any:
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def write_checkpoint(root: Path, step: int, weights: dict[str, torch.Tensor], state: dict[str, Any] | None,
                     config_yaml: str, metadata: dict[str, str] | None = None) -> Path:
    """Write `root/step-XXXXXX` atomically and point `root/latest` at it."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_dir_name(step)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{final.name}.tmp-', dir=root))
    try:
        # not atomic by itself: the whole directory is renamed into place below
        save_state_dict({k: v.cpu() for k, v in weights.items()}, tmp / WEIGHTS, atomic=False,
                        metadata={'format': 'scepter', 'step': str(step), **(metadata or {})})
        if state is not None:
            torch.save(state, tmp / STATE)
        (tmp / 'config.yaml').write_text(config_yaml)
        for f in tmp.iterdir():
            with open(f, 'rb') as fh:
                os.fsync(fh.fileno())
        fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(root)
        pointer = root / f'.{LATEST}.tmp'
        pointer.write_text(final.name + '\n')
        os.replace(pointer, root / LATEST)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def resolve_checkpoint(path: str | Path, work_dir: str | Path | None = None) -> Path:
    """`latest` (in WORK_DIR), a work dir, a checkpoints dir, a step dir or a pointer -> the step dir."""
    if str(path) == LATEST:
        if work_dir is None:
            raise CheckpointError("'--resume latest' needs a WORK_DIR")
        path = Path(work_dir)
    step = find_step_dir(path)
    if step is None or not (step / WEIGHTS).is_file():
        raise CheckpointError(f"no checkpoint at '{path}' (expected {WEIGHTS} in a step directory, "
                              f"or a '{LATEST}' pointer)")
    return step


def prune(root: Path, keep_last: int) -> None:
    """Keep the newest `keep_last` step directories (and always the one `latest` names)."""
    if keep_last <= 0:
        return
    steps = sorted(d for d in root.glob('step-*') if d.is_dir() and '.tmp-' not in d.name)
    latest = (root / LATEST).read_text().strip() if (root / LATEST).is_file() else None
    for d in steps[:-keep_last]:
        if d.name != latest:
            shutil.rmtree(d, ignore_errors=True)
    for d in root.glob('.step-*.tmp-*'):  # leftovers of a killed save
        shutil.rmtree(d, ignore_errors=True)


def read_training_state(step_dir: Path) -> dict[str, Any] | None:
    f = step_dir / STATE
    if not f.is_file():
        return None
    try:
        return torch.load(f, map_location='cpu', weights_only=True)
    except Exception as e:
        raise CheckpointError(f"cannot read training state '{f}': {e}") from e

"""Checkpoint trees: atomic directories of weights (safetensors) and training state, and
the solver's side of them (what a checkpoint keeps of a solver, and restoring it).

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

from ..checkpoint import LATEST, WEIGHTS, find_step_dir, fsync_dir, load_into, load_state_dict, save_state_dict
from ..config import Config
from ..env import PY_RNG, we
from ..errors import CheckpointError
from . import resume_guard as guard

# `solver` below is a BaseSolver; not imported, since the solver imports this module.
BaseSolver = Any

STATE = 'training_state.pt'


def step_dir_name(step: int) -> str:
    return f'step-{step:06d}'


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {'python': PY_RNG.getstate(),  # the stream training draws from (env.py)
             'torch': torch.get_rng_state(),
             'numpy': (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:])}
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    python = _tuples(state['python'])
    PY_RNG.setstate(python)
    random.setstate(python)
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
            _discard(final)
        os.replace(tmp, final)
        fsync_dir(root)
        pointer = root / f'.{LATEST}.tmp'
        pointer.write_text(final.name + '\n')
        os.replace(pointer, root / LATEST)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _discard(step_dir: Path) -> None:
    """Delete a step directory; renamed away first, so a kill mid-delete never leaves a
    half-deleted step (a leftover `.step-*.tmp-*` is cleaned by the next `prune`)."""
    gone = step_dir.with_name(f'.{step_dir.name}.tmp-old-{os.getpid()}')
    os.replace(step_dir, gone)
    shutil.rmtree(gone, ignore_errors=True)


def resolve_checkpoint(path: str | Path, work_dir: str | Path | None = None) -> Path:
    """`latest` (in WORK_DIR), a work dir, a checkpoints dir, a step dir or a pointer -> the step dir."""
    if str(path) == LATEST:
        if work_dir is None:
            raise CheckpointError("'--resume latest' needs a WORK_DIR")
        path = Path(work_dir)
    step = find_step_dir(path)
    newest = newest_step_dir(Path(path) / 'checkpoints') if str(path) == str(work_dir) else None
    if newest is not None and (step is None or step_number(newest) > step_number(step)):
        step = newest  # a save killed between its rename and the pointer's update
    if step is None or not (step / WEIGHTS).is_file():
        raise CheckpointError(f"no checkpoint at '{path}' (expected {WEIGHTS} in a step directory, "
                              f"or a '{LATEST}' pointer)")
    return step


def step_number(step_dir: Path) -> int:
    """The step of a `step-NNNNNN` directory (-1 for other names)."""
    name = step_dir.name
    return int(name[5:]) if name.startswith('step-') and name[5:].isdigit() else -1


def step_dirs(root: Path) -> list[Path]:
    """The finished step directories under a checkpoints dir, oldest first."""
    found = [d for d in root.glob('step-*') if d.is_dir() and step_number(d) >= 0] if root.is_dir() else []
    return sorted(found, key=step_number)


def newest_step_dir(root: Path) -> Path | None:
    """The newest finished step directory with weights (None when there is none)."""
    done = [d for d in step_dirs(root) if (d / WEIGHTS).is_file()]
    return done[-1] if done else None


def refuse_newer(root: Path, step: int) -> None:
    """Training from `step` would overwrite the checkpoints of later steps in `root`: refuse."""
    newer = [d for d in step_dirs(root) if step_number(d) > step]
    if newer:
        raise CheckpointError(f"'{root}' already holds {newer[-1].name}, newer than step {step} where this run "
                              f"starts, and training would overwrite it: resume it with --resume latest, "
                              f"or train in another --work-dir")


def prune(root: Path, keep_last: int) -> None:
    """Remove the leftovers of killed saves and keep the newest `keep_last` step directories
    (0: all; always the one `latest` names)."""
    for d in root.glob('.step-*.tmp-*'):  # leftovers of a killed save (WORK_DIR's lock: none is in progress)
        shutil.rmtree(d, ignore_errors=True)
    if keep_last <= 0:
        return
    steps = step_dirs(root)
    latest = (root / LATEST).read_text().strip() if (root / LATEST).is_file() else None
    for d in steps[:-keep_last]:
        if d.name != latest:
            _discard(d)


def read_training_state(step_dir: Path) -> dict[str, Any] | None:
    f = step_dir / STATE
    if not f.is_file():
        return None
    try:
        return torch.load(f, map_location='cpu', weights_only=True)
    except Exception as e:
        raise CheckpointError(f"cannot read training state '{f}': {e}") from e


# ---- a solver's checkpoint ------------------------------------------------------------------

def model_state(solver: BaseSolver) -> dict[str, torch.Tensor]:
    """The weights a checkpoint keeps (whole, also under FSDP: there all ranks call and rank 0
    gets them). A tuned run keeps its adapters only (and the EMA copy's, with USE_EMA)."""
    cfg = solver.cfg
    if solver.is_fsdp:
        from ..fsdp import full_model_state
        sd = full_model_state(solver.model)
        if cfg.TUNER:
            from ..tuners import tuner_state_dict
            keys = set(tuner_state_dict(solver.unwrapped_model, ema=True))
            return {k: v for k, v in sd.items() if k in keys}
    elif cfg.TUNER:
        from ..tuners import tuner_state_dict
        return tuner_state_dict(solver.unwrapped_model, ema=True)
    else:
        sd = solver.unwrapped_model.state_dict()
    keep = tuple(cfg.SAVE_MODULES or ())
    return {k: v for k, v in sd.items() if not keep or k.startswith(keep)}


def _hook_key(i: int, hook: Any) -> str:
    return f'{i}:{type(hook).__name__}'


def training_state(solver: BaseSolver) -> dict[str, Any]:
    """Everything besides the weights that an exact resume needs (all ranks call: the RNG
    states of every rank are gathered, FSDP gathers the optimizer state)."""
    from ..dist import all_gather
    hooks = {_hook_key(i, h): h.state_dict() for i, h in enumerate(solver.hooks.get('train', []))}
    optimizer = solver.optimizer.state_dict() if solver.optimizer else None
    if solver.is_fsdp:
        from ..fsdp import full_optimizer_state, full_tensors
        optimizer = full_optimizer_state(solver.model, solver.optimizer) if solver.optimizer else None
        hooks = full_tensors(hooks)
    rng = rng_state()
    return {
        **solver.state.counters(), 'max_steps': solver.state.max_steps, 'cpu_gemm': _PINNED['gemm'],
        'optimizer': optimizer, 'optimizer_by_name': solver.is_fsdp,
        'lr_scheduler': solver.lr_scheduler.state_dict() if solver.lr_scheduler else None,
        'scaler': solver.scaler.state_dict() if solver.scaler else None,
        'hooks': hooks, 'world_size': we.world_size,
        'rng': rng, 'rng_per_rank': all_gather(rng) if we.is_distributed else [rng],
    }


def adapter_metadata(solver: BaseSolver) -> dict[str, str]:
    """safetensors metadata of a tuned run's weights: its adapter configs and base-model hash,
    so that its checkpoint loads as an adapter file anywhere."""
    if not solver.cfg.TUNER:
        return {}
    from ..tuners import adapter_metadata as metadata
    return metadata(solver.unwrapped_model)


def save(solver: BaseSolver, with_state: bool = True, keep_last: int = 0) -> Path:
    """Write the checkpoint tree of the current step and keep the newest `keep_last` (0: all).
    All ranks call (FSDP gathers the weights); rank 0 writes; nobody goes on before it is on disk."""
    weights = model_state(solver)
    state = training_state(solver) if with_state else None
    out = solver.work_dir / 'checkpoints' / step_dir_name(solver.state.step)
    if we.is_main:
        write_checkpoint(out.parent, solver.state.step, weights, state, Config(solver.cfg_root or {}).to_yaml(),
                         metadata=adapter_metadata(solver))
        prune(out.parent, keep_last)
    solver.state.last_checkpoint = str(out)  # on every rank: hooks decide from it, all ranks alike
    from ..dist import barrier
    barrier()
    return out


def load(solver: BaseSolver, checkpoint: str) -> dict[str, Any] | None:
    """Restore weights and (without LOAD_MODEL_ONLY) optimizer, scheduler, scaler, hooks and
    counters. Returns `{'rng': this rank's RNG state or None}` for `restore_rng` once the
    loaders exist, or None when only weights were loaded. A full resume needs the training
    state and a recipe that changed only where a resume can follow (resume_guard.py)."""
    step_dir = resolve_checkpoint(checkpoint, solver.work_dir)
    model_only = bool(solver.cfg.LOAD_MODEL_ONLY)
    saved = None if model_only else read_training_state(step_dir)
    if saved is None and not model_only:
        raise CheckpointError(f"cannot resume from '{step_dir}': it has weights but no {STATE} (optimizer, "
                              f"schedule and position), so training cannot continue where it stopped; start "
                              f"from its weights at step 0 in another --work-dir with "
                              f"--set SOLVER.LOAD_MODEL_ONLY=true")
    recipe = None
    if not model_only:
        recipe = guard.saved_solver(step_dir)
        guard.check_recipe(step_dir, recipe, guard.current_solver(solver.cfg_root, solver.cfg))
    if solver.is_fsdp:  # each rank reads the whole file and keeps its shard
        from ..fsdp import load_full_model_state
        report = load_full_model_state(solver.model, load_state_dict(step_dir / WEIGHTS))
    else:
        report = load_into(solver.unwrapped_model, load_state_dict(step_dir / WEIGHTS), logger=solver.logger)
    solver.logger.info(f'resumed weights from {step_dir}: {report}')
    if saved is None:
        return None
    st = solver.state
    for key in st.COUNTERS:
        setattr(st, key, int(saved.get(key, 0)))
    if saved['world_size'] != we.world_size:  # keep the number of samples seen, not the iteration count
        st.total_iter = st.total_iter * saved['world_size'] // we.world_size
    by_name = saved.get('optimizer_by_name')
    if solver.optimizer is not None and by_name:  # written under FSDP
        from ..fsdp import load_full_optimizer_state
        load_full_optimizer_state(solver.model, solver.optimizer, saved['optimizer'])
    for obj, key in ((solver.optimizer, 'optimizer'), (solver.lr_scheduler, 'lr_scheduler'), (solver.scaler, 'scaler')):
        if obj is not None and saved.get(key) is not None and not (key == 'optimizer' and by_name):
            obj.load_state_dict(saved[key])
    hooks = saved['hooks']
    if solver.is_fsdp:  # saved whole: shard what belongs to sharded parameters (EMA shadows)
        from ..fsdp import shard_like
        hooks = shard_like(hooks, solver.model)
    for i, hook in enumerate(solver.hooks.get('train', [])):
        hook.load_state_dict(hooks.get(_hook_key(i, hook), {}))
    # Each rank continues its own random streams; with another world size the ranks get
    # fresh ones (seeded from the step), and only the data position carries over.
    per_rank = saved.get('rng_per_rank') or [saved['rng']]
    same_world = saved['world_size'] == we.world_size and len(per_rank) == we.world_size
    st.last_checkpoint = str(step_dir)
    guard.apply_learning_rate(solver, recipe, solver.logger)
    old_max = saved.get('max_steps', (recipe or {}).get('MAX_STEPS'))
    guard.warn_schedule_length(solver, int(old_max) if old_max is not None else None, solver.logger)
    solver.logger.info(f'resuming at step {st.step} from {step_dir}')
    return {'rng': per_rank[we.rank] if same_world else None, 'cpu_gemm': saved.get('cpu_gemm')}


def restore_rng(resume: dict[str, Any] | None, seed: int, step: int) -> None:
    """At the start of training, after the loaders were made (making them draws random numbers)."""
    if resume is None:
        return
    if resume['rng'] is not None:
        set_rng_state(resume['rng'])
    else:  # resumed with another world size: fresh streams, not those of step 0 again
        from ..data.samplers import mix_seed
        we.seed_all(mix_seed(seed, step) % 2 ** 31)


_PINNED: dict[str, str | None] = {'gemm': None}  # the CPU matmul backend this process pinned


def pin_cpu_gemm(resume: dict[str, Any] | None) -> None:
    """Fix the fp32 CPU matmul backend (accel/gemm.py) for training, since its kernels round
    differently: the one the resumed checkpoint trained with, else rank 0's probe, so that a
    noisy timing probe gives neither two ranks nor a resume another choice.
    SCEPTER_CPU_GEMM set by the user wins."""
    from ..accel import gemm
    given = os.environ.get(gemm.ENV)
    if we.device.type != 'cpu' or (given and given != _PINNED['gemm'] and gemm.choice() != 'auto'):
        return
    value = (resume or {}).get('cpu_gemm')
    if value not in ('onednn', 'aten'):
        os.environ.pop(gemm.ENV, None)
        from ..dist import all_gather
        value = gemm.backend()
        value = all_gather(value)[0] if we.is_distributed else value
    os.environ[gemm.ENV] = _PINNED['gemm'] = value

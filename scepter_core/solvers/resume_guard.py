"""What a resume may change in a recipe. A checkpoint keeps the recipe it was trained with
(`config.yaml` beside the weights); resuming compares it with the recipe now:

- keys that break loading or exactness (the model, the optimizer, the seed, the batch size
  ...) stop the resume in one line that names them, unless SOLVER.LOAD_MODEL_ONLY;
- a new SOLVER.OPTIMIZER.LEARNING_RATE is applied from the resumed step on (one warning line);
- a schedule whose length follows MAX_STEPS, resumed with another MAX_STEPS, cannot continue
  exactly: one warning line says so. Everything else (hooks, intervals, workers) may change."""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import yaml

from ..config import Config
from ..errors import CheckpointError

# SOLVER keys (and the blocks under them) that a resume must find unchanged.
BREAKING = ('MODEL', 'OPTIMIZER', 'TUNER', 'SEED', 'ACCU_STEP', 'FREEZE', 'TRAIN_MODULES', 'SAVE_MODULES',
            'QUANTIZE_BASE', 'USE_AMP', 'DTYPE', 'USE_FSDP', 'LR_SCHEDULER.NAME', 'TRAIN_DATA.BATCH_SIZE')
APPLIED = ('OPTIMIZER.LEARNING_RATE',)  # changed on resume: applied from the resumed step
# Where files are, not what they hold (the weights come from the checkpoint anyway).
PATH_KEY = re.compile(r'(^|\.)(PRETRAINED_\w*|\w*_PATH|\w*_DIR)$')
CONSTANT_SCHEDULES = ('constant', 'ConstantLR')


def flatten(node: Any, prefix: str = '') -> dict[str, Any]:
    """Dotted key -> leaf value of a nested recipe block (list items by index)."""
    if isinstance(node, dict) and node:
        items = node.items()
    elif isinstance(node, list) and node and any(isinstance(v, (dict, list)) for v in node):
        items = ((str(i), v) for i, v in enumerate(node))
    else:
        return {prefix: node}
    out: dict[str, Any] = {}
    for k, v in items:
        out.update(flatten(v, f'{prefix}.{k}' if prefix else str(k)))
    return out


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + '.') or p.startswith(key + '.') for p in prefixes)


def changed_keys(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """SOLVER keys (dotted) whose values differ between two SOLVER blocks, path keys left out."""
    a, b = flatten(saved), flatten(now)
    return sorted(k for k in set(a) | set(b) if a.get(k, '<unset>') != b.get(k, '<unset>')
                  and not PATH_KEY.search(k))


def saved_solver(step_dir: Path) -> dict[str, Any] | None:
    """The SOLVER block of the recipe saved beside a checkpoint (None when there is none)."""
    f = step_dir / 'config.yaml'
    if not f.is_file():
        return None
    try:
        data = yaml.safe_load(f.read_text(encoding='utf-8'))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise CheckpointError(f"cannot read the recipe saved with the checkpoint '{f}': {e}") from e
    solver = data.get('SOLVER') if isinstance(data, dict) else None
    return solver if isinstance(solver, dict) else None


def current_solver(cfg_root: Config | None, solver_cfg: Config) -> dict[str, Any]:
    """This run's SOLVER block, serialised as a checkpoint would save it."""
    root = Config(cfg_root or {'SOLVER': solver_cfg})
    return (yaml.safe_load(root.to_yaml()) or {}).get('SOLVER') or {}


def check_recipe(step_dir: Path, saved: dict[str, Any] | None, now: dict[str, Any]) -> list[str]:
    """Raise naming the keys that changed in a way a resume cannot follow; return all changed keys."""
    if saved is None:
        return []
    changed = changed_keys(saved, now)
    breaking = sorted((k for k in changed if _under(k, BREAKING) and not _under(k, APPLIED)),
                      key=lambda k: (not k.endswith('NAME'), k))  # another class first: the root cause
    if breaking:
        shown = ', '.join(f'SOLVER.{k}' for k in breaking[:6]) + (f' and {len(breaking) - 6} more'
                                                                  if len(breaking) > 6 else '')
        raise CheckpointError(f"cannot resume from '{step_dir}': the recipe changed in {shown} "
                              f"(load the weights alone with --set SOLVER.LOAD_MODEL_ONLY=true)")
    return changed


def apply_learning_rate(solver: Any, saved: dict[str, Any] | None, logger: logging.Logger) -> None:
    """A LEARNING_RATE changed on resume scales every parameter group's rate (and the
    schedule's base rates) by new / saved, from the resumed step on."""
    old = ((saved or {}).get('OPTIMIZER') or {}).get('LEARNING_RATE')
    new = solver.cfg.OPTIMIZER.get('LEARNING_RATE') if solver.cfg.OPTIMIZER else None
    if old is None or new is None or float(old) == float(new) or solver.optimizer is None:
        return
    if float(old) == 0.0:
        logger.warning(f'SOLVER.OPTIMIZER.LEARNING_RATE: the checkpoint trained with 0; {new} not applied '
                       f'(no rate to scale the parameter groups from)')
        return
    ratio = float(new) / float(old)
    for g in solver.optimizer.param_groups:
        g['lr'] *= ratio
        if 'initial_lr' in g:
            g['initial_lr'] *= ratio
    sched = solver.lr_scheduler
    if sched is not None and hasattr(sched, 'base_lrs'):
        sched.base_lrs = [b * ratio for b in sched.base_lrs]
        sched._last_lr = [g['lr'] for g in solver.optimizer.param_groups]
    logger.warning(f'SOLVER.OPTIMIZER.LEARNING_RATE: {old} in the checkpoint, {new} now: applied from step '
                   f'{solver.state.step} on (the run no longer matches one trained straight)')


def warn_schedule_length(solver: Any, saved_max_steps: int | None, logger: logging.Logger) -> None:
    """One line when the LR schedule's length follows MAX_STEPS and MAX_STEPS changed."""
    sched = solver.cfg.LR_SCHEDULER
    now = solver.state.max_steps
    if not sched or saved_max_steps is None or saved_max_steps == now or sched.get('TOTAL_STEPS') \
            or sched.get('NAME') in CONSTANT_SCHEDULES:
        return
    logger.warning(f"SOLVER.MAX_STEPS: {saved_max_steps} in the checkpoint, {now} now: the {sched.get('NAME')} "
                   f'schedule decays over MAX_STEPS, so the resumed run cannot match a straight one '
                   f'(set SOLVER.LR_SCHEDULER.TOTAL_STEPS to keep one schedule)')

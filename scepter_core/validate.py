"""Whole-recipe validation: every block checked against its class, nothing built."""
from __future__ import annotations

from pathlib import Path

from .config import Config
from .errors import ConfigError, ScepterError
from .launch_config import check_env_block
from .params import recipe_strict, strict_mode
from .registry import check_blocks
from .sample_args import check_sample_args, check_sampler, sample_kwargs

# Top-level sections of a recipe that hold blocks, and the registry of those blocks.
SECTIONS = {'SOLVER': 'SOLVERS', 'FILE_SYSTEM': 'FILE_SYSTEMS'}
TOP_LEVEL_KEYS = {'ENV', 'SOLVER', 'IMPORTS', 'STRICT', 'FILE_SYSTEM'}
HOOK_KEYS = ('TRAIN_HOOKS', 'EVAL_HOOKS', 'TEST_HOOKS')


def validate_recipe(cfg: Config) -> list[str]:
    """One line per problem; empty when the recipe is valid. The recipe's own STRICT
    decides whether unknown keys are problems (see `params.strict_mode`)."""
    try:
        strict = recipe_strict(cfg)
    except ConfigError as e:
        return [str(e)]
    problems = [f"'{k}': unknown top-level section (expected one of {', '.join(sorted(TOP_LEVEL_KEYS))})"
                for k in cfg if k not in TOP_LEVEL_KEYS and not str(k).startswith('_')]
    if 'SOLVER' not in cfg:
        problems.append("'SOLVER': the recipe has no SOLVER block")
    with strict_mode(strict):
        for key, reg in SECTIONS.items():
            if cfg.get(key) is not None:
                problems += check_blocks(reg, cfg[key], key)
        if cfg.get('ENV') is not None:
            problems += check_env_block(cfg.ENV)
    return problems + _sample_args_problems(cfg.get('SOLVER'))


def _sample_args_problems(solver: object) -> list[str]:
    """SAMPLE_ARGS of the solver and of its hooks (probes), which train reads only when it samples."""
    if not isinstance(solver, dict):
        return []
    blocks = [solver.get('SAMPLE_ARGS')] + [h.get('SAMPLE_ARGS') for key in HOOK_KEYS
                                           for h in (solver.get(key) or []) if isinstance(h, dict)]
    problems = []
    for block in blocks:
        if not isinstance(block, dict):
            continue
        try:
            where = getattr(block, 'path', '') or 'SAMPLE_ARGS'
            sample_kwargs(block)
            check_sample_args(block, where)
            if isinstance(block.get('SAMPLER'), str):
                check_sampler(block['SAMPLER'], where)
        except ConfigError as e:
            problems.append(str(e))
    return problems


def _weights_paths(node: object, path: str) -> list[tuple[str, str]]:
    """(key path, value) of every local PRETRAINED_MODEL path under `node`."""
    found = []
    if isinstance(node, dict):
        for k, v in node.items():
            kpath = f'{path}.{k}'
            if k == 'PRETRAINED_MODEL' and isinstance(v, str) and v and '://' not in v:
                found.append((kpath, v))
            else:
                found += _weights_paths(v, kpath)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            found += _weights_paths(v, f'{path}.{i}')
    return found


def missing_weights_producer(cfg: Config, recipe_path: str | Path) -> str | None:
    """For weights the recipe reads that do not exist yet but that a recipe beside it writes
    (stage 2 of a two-stage example before stage 1): the line saying which recipe to train first."""
    missing = [(k, v) for k, v in _weights_paths(cfg.get('SOLVER'), 'SOLVER') if not Path(v).exists()]
    if not missing:
        return None
    recipe_path = Path(recipe_path)
    for sibling in sorted(recipe_path.parent.glob('*.y*ml')):
        if sibling.resolve() == recipe_path.resolve():
            continue
        try:
            work_dir = Config.load(sibling).get_path('SOLVER.WORK_DIR')
        except ScepterError:
            continue
        if not isinstance(work_dir, str):
            continue
        for key, value in missing:
            if Path(value).resolve().is_relative_to(Path(work_dir).resolve()):
                return (f"'{key}': '{value}' does not exist yet; {sibling} writes it: train that recipe first "
                        f"(scepter train --cfg {sibling})")
    return None

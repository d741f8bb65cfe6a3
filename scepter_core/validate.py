"""Whole-recipe validation: every block checked against its class, nothing built."""
from __future__ import annotations

from .config import Config
from .errors import ConfigError
from .launch_config import check_env_block
from .params import recipe_strict, strict_mode
from .registry import check_blocks

# Top-level sections of a recipe that hold blocks, and the registry of those blocks.
SECTIONS = {'SOLVER': 'SOLVERS', 'FILE_SYSTEM': 'FILE_SYSTEMS'}
TOP_LEVEL_KEYS = {'ENV', 'SOLVER', 'IMPORTS', 'STRICT', 'FILE_SYSTEM'}


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
    return problems

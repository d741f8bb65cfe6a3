"""Whole-recipe validation: every block checked against its class, nothing built."""
from __future__ import annotations

from .config import Config
from .params import check_blocks, strict_default

# Top-level sections of a recipe and the registry their block belongs to.
SECTIONS = {'SOLVER': 'SOLVERS'}
TOP_LEVEL_KEYS = {'ENV', 'SOLVER', 'IMPORTS', 'STRICT', 'FILE_SYSTEM'}


def validate_recipe(cfg: Config) -> list[str]:
    """One line per problem; empty when the recipe is valid."""
    strict = cfg.get('STRICT', strict_default())
    problems = [f"'{k}': unknown top-level section (expected one of {', '.join(sorted(TOP_LEVEL_KEYS))})"
                for k in cfg if k not in TOP_LEVEL_KEYS and not str(k).startswith('_')]
    if 'SOLVER' not in cfg:
        problems.append("'SOLVER': the recipe has no SOLVER block")
    for key, reg in SECTIONS.items():
        if key in cfg:
            problems += check_blocks(reg, cfg[key], key, strict)
    if 'ENV' in cfg:
        from .launch_config import check_env_block
        problems += check_env_block(cfg.ENV)
    return problems

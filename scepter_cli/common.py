"""Shared CLI pieces: console, config loading with overrides and user imports."""
from __future__ import annotations

from typing import Optional

import typer
from rich.console import Console

console = Console(soft_wrap=True)  # paths and keys stay on one line (copy-pasteable, greppable)
err_console = Console(stderr=True, soft_wrap=True)

SET_HELP = 'Override a config value: KEY.PATH=VALUE (repeatable), e.g. SOLVER.MAX_STEPS=10.'
IMPORT_HELP = 'Python file or module that registers user classes (repeatable).'

SetOpt = typer.Option(None, '--set', '-s', help=SET_HELP, metavar='KEY=VALUE')
ImportOpt = typer.Option(None, '--import', help=IMPORT_HELP, metavar='PATH')


def load_config(cfg_path: str, overrides: Optional[list[str]], imports: Optional[list[str]] = None):
    """Read a recipe, apply `--set` overrides, load user code named by --import (relative
    to the working directory) and by the recipe's IMPORTS (relative to the recipe first)."""
    from scepter_core.config import Config
    from scepter_core.errors import ConfigError
    from scepter_core.imports import import_user_code
    cfg = Config.load(cfg_path, overrides or [])
    import_user_code(list(imports or []))
    recipe_imports = cfg.get('IMPORTS') or []
    if isinstance(recipe_imports, str):
        recipe_imports = [recipe_imports]
    if not isinstance(recipe_imports, list):
        raise ConfigError(f"'IMPORTS': expected a list of files or modules, got {recipe_imports!r}")
    import_user_code(recipe_imports, base_dir=cfg_path)
    return cfg

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
TrustOpt = typer.Option(False, '--trust-imports',
                        help="Run the recipe's IMPORTS (user code), which only train and test run by themselves.")


def load_config(cfg_path: str, overrides: Optional[list[str]], imports: Optional[list[str]] = None,
                trust_imports: bool = True):
    """Read a recipe, apply `--set` overrides, load user code named by --import (relative
    to the working directory) and, when `trust_imports`, by the recipe's IMPORTS (relative to
    the recipe first). Returns (recipe, the line saying which IMPORTS were not run, or '')."""
    from scepter_core.config import Config
    from scepter_core.imports import import_user_code, recipe_imports, untrusted_note
    cfg = Config.load(cfg_path, overrides or [])
    import_user_code(list(imports or []), label='--import')
    items = recipe_imports(cfg)
    if not trust_imports:
        return cfg, untrusted_note(items)
    import_user_code(items, base_dir=cfg_path)
    return cfg, ''

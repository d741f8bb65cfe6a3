"""Shared CLI pieces: console, config loading with overrides and user imports."""
from __future__ import annotations

from typing import Optional

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)

SET_HELP = 'Override a config value: KEY.PATH=VALUE (repeatable), e.g. SOLVER.MAX_STEPS=10.'
IMPORT_HELP = 'Python file or module that registers user classes (repeatable).'

SetOpt = typer.Option(None, '--set', '-s', help=SET_HELP, metavar='KEY=VALUE')
ImportOpt = typer.Option(None, '--import', help=IMPORT_HELP, metavar='PATH')


def load_config(cfg_path: str, overrides: Optional[list[str]], imports: Optional[list[str]] = None):
    """Read a recipe, apply `--set` overrides, load user code named by IMPORTS / --import."""
    from scepter_core.config import Config
    from scepter_core.imports import import_user_code
    cfg = Config.load(cfg_path, overrides or [])
    import_user_code(list(imports or []) + list(cfg.get('IMPORTS') or []), base_dir=cfg_path)
    return cfg

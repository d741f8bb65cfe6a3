"""Load user code (files or modules) that registers classes, without forking the project.

Trust: code runs only when the user asks for it: `--import`, or the IMPORTS of a recipe named
to `train` / `test`. Showing, validating or loading weights (whose folder holds a config.yaml
that anyone may have written) runs a recipe's IMPORTS only with `--trust-imports`."""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Mapping

from .errors import ConfigError, ScepterError

# What this process imported, in order (absolute file paths and module names), so that
# workers started with the 'spawn' method can import the same user code (launch.py).
LOADED: list[str] = []


def _is_file_ref(item: str) -> bool:
    return item.endswith('.py') or os.sep in item or '/' in item


def _search_dirs(base_dir: str | os.PathLike | None) -> list[Path]:
    """The recipe's directory (when given) first, then the working directory."""
    dirs = []
    if base_dir:
        base = Path(base_dir)
        dirs.append(base.parent if base.suffix else base)
    dirs.append(Path.cwd())
    return dirs


def _add_to_path(directory: Path) -> None:
    entry = str(directory.resolve())
    if entry not in sys.path:
        sys.path.insert(0, entry)


def _import_file(item: str, dirs: list[Path], label: str) -> None:
    path = next((d / item for d in dirs if (d / item).is_file()), None)
    if path is None:
        tried = ', '.join(f"'{d / item}'" for d in dirs)
        raise ConfigError(f"{label}: file not found: '{item}' (looked at {tried})")
    path = path.resolve()
    # One module name per file, stable across calls, so a file is executed only once.
    name = f'scepter_user_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}'
    if name in sys.modules:
        return
    _add_to_path(path.parent)  # so the file can import its neighbours
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        LOADED.append(str(path))
    except ScepterError:
        del sys.modules[name]
        raise
    except Exception as e:
        del sys.modules[name]
        raise ScepterError(f"{label}: running '{path}' failed: {type(e).__name__}: {e}") from e
    except SystemExit as e:  # user code must not end the command (a `train` that exits 0 without training)
        del sys.modules[name]
        raise ScepterError(f"{label}: '{path}' called sys.exit({e.code!r}) while being imported") from None


def _import_module(item: str, dirs: list[Path], label: str) -> None:
    for d in reversed(dirs):  # `scepter` run as a console script does not have the cwd on sys.path
        _add_to_path(d)
    try:
        importlib.import_module(item)
        if item not in LOADED:
            LOADED.append(item)
    except ModuleNotFoundError as e:
        raise ConfigError(f"{label}: cannot import module '{item}': {e}") from e
    except SystemExit as e:
        raise ScepterError(f"{label}: module '{item}' called sys.exit({e.code!r}) while being imported") from None


def import_user_code(items: list[str], base_dir: str | os.PathLike | None = None, label: str = 'IMPORTS') -> None:
    """Import each `path/to/file.py` or `package.module`.

    Files are looked up relative to `base_dir` (the recipe file or its directory) and then
    the working directory; modules are imported with both on `sys.path`. `label` names
    where the list came from in errors (IMPORTS, --import)."""
    dirs = _search_dirs(base_dir)
    for item in items or ():
        item = str(item)
        if _is_file_ref(item):
            _import_file(item, dirs, label)
        else:
            _import_module(item, dirs, label)


def recipe_imports(cfg: Mapping) -> list[str]:
    """The recipe's IMPORTS as a list (a single string is one item)."""
    items = cfg.get('IMPORTS') or []
    if isinstance(items, str):
        items = [items]
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise ConfigError(f"'IMPORTS': expected a list of files or modules, got {items!r}")
    return items


def untrusted_note(items: list[str]) -> str:
    """The line that says a recipe's IMPORTS were not run and how to run them ('' if none)."""
    if not items:
        return ''
    return (f"the recipe's IMPORTS ({', '.join(items)}) were not run: code named by a recipe runs only for "
            f"train/test, or with --trust-imports")

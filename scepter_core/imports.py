"""Load user code (files or modules) that registers classes, without forking the project."""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from pathlib import Path

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


def _import_file(item: str, dirs: list[Path]) -> None:
    path = next((d / item for d in dirs if (d / item).is_file()), None)
    if path is None:
        tried = ', '.join(f"'{d / item}'" for d in dirs)
        raise ConfigError(f"IMPORTS: file not found: '{item}' (looked at {tried})")
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
        raise ScepterError(f"IMPORTS: running '{path}' failed: {type(e).__name__}: {e}") from e


def _import_module(item: str, dirs: list[Path]) -> None:
    for d in reversed(dirs):  # `scepter` run as a console script does not have the cwd on sys.path
        _add_to_path(d)
    try:
        importlib.import_module(item)
        if item not in LOADED:
            LOADED.append(item)
    except ModuleNotFoundError as e:
        raise ConfigError(f"IMPORTS: cannot import module '{item}': {e}") from e


def import_user_code(items: list[str], base_dir: str | os.PathLike | None = None) -> None:
    """Import each `path/to/file.py` or `package.module`.

    Files are looked up relative to `base_dir` (the recipe file or its directory) and then
    the working directory; modules are imported with both on `sys.path`."""
    dirs = _search_dirs(base_dir)
    for item in items or ():
        item = str(item)
        if _is_file_ref(item):
            _import_file(item, dirs)
        else:
            _import_module(item, dirs)

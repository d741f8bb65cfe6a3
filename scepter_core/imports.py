"""Load user code (files or modules) that registers classes, without forking the project."""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

from .errors import ConfigError


def import_user_code(items: list[str], base_dir: str | None = None) -> None:
    """Import each `path/to/file.py` (relative to the recipe, then the cwd) or `package.module`."""
    for item in items:
        item = str(item)
        if item.endswith('.py') or os.sep in item or '/' in item:
            candidates = [Path(item)]
            if base_dir:
                base = Path(base_dir)
                candidates.insert(0, (base.parent if base.suffix else base) / item)
            path = next((p for p in candidates if p.is_file()), None)
            if path is None:
                raise ConfigError(f"IMPORTS: file not found: '{item}'")
            name = f'scepter_user_{path.stem}_{abs(hash(str(path.resolve()))) % 10**8}'
            if name in sys.modules:
                continue
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            sys.path.insert(0, str(path.parent.resolve()))
            spec.loader.exec_module(module)
        else:
            try:
                importlib.import_module(item)
            except ModuleNotFoundError as e:
                raise ConfigError(f"IMPORTS: cannot import module '{item}': {e}") from e

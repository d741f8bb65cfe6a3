"""File access confined to the `--root` directories, and what lies under them."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator

from scepter_core.errors import ScepterError

WEIGHT_SUFFIXES = ('.safetensors', '.ckpt', '.pt', '.pth', '.bin')
IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.webp', '.bmp')
RECIPE_SUFFIXES = ('.yaml', '.yml')
MAX_DEPTH = 5  # how deep under a root the model / recipe scan looks


class StudioError(ScepterError):
    """A request the Studio refuses (a path outside the roots, a bad value); shown as is."""


class Roots:
    """The directories the Studio may read and write. Every path a request names is resolved
    (symlinks followed) and must land inside one of them; `..` is refused outright."""

    def __init__(self, roots: Iterable[str | os.PathLike]):
        self.roots = [Path(r).expanduser().resolve() for r in roots]
        missing = [str(r) for r in self.roots if not r.is_dir()]
        if not self.roots:
            raise StudioError('--root: give at least one directory')
        if missing:
            raise StudioError(f"--root: not a directory: {', '.join(missing)}")

    @property
    def first(self) -> Path:
        return self.roots[0]

    def resolve(self, path: str | os.PathLike, must_exist: bool = True) -> Path:
        """`path` (absolute, or relative to the first root) inside the roots, else StudioError."""
        raw = str(path).strip()
        if not raw:
            raise StudioError('no path given')
        if '..' in Path(raw).parts:
            raise StudioError(f"'{raw}': '..' is not allowed in paths")
        p = Path(raw).expanduser()
        full = (p if p.is_absolute() else self.first / p).resolve()
        if not any(full == r or full.is_relative_to(r) for r in self.roots):
            raise StudioError(f"'{raw}' is outside the studio roots ({', '.join(map(str, self.roots))})")
        if must_exist and not full.exists():
            raise StudioError(f"'{raw}' does not exist")
        return full

    def relative(self, path: Path) -> str:
        """A path as shown in the UI: relative to its root when there is one root."""
        for r in self.roots:
            if path.is_relative_to(r):
                return str(path.relative_to(r)) if len(self.roots) == 1 else str(path)
        return str(path)

    def walk(self) -> Iterator[tuple[Path, list[str], list[str]]]:
        """os.walk over every root, to MAX_DEPTH, without hidden folders or symlinked ones."""
        for root in self.roots:
            for here, dirs, files in os.walk(root, followlinks=False):
                depth = len(Path(here).relative_to(root).parts)
                dirs[:] = sorted(d for d in dirs if not d.startswith('.') and depth < MAX_DEPTH
                                 and not (Path(here) / d).is_symlink())
                yield Path(here), dirs, sorted(files)


def find_models(roots: Roots) -> tuple[list[str], list[str]]:
    """(models, LoRA files) under the roots: our work dirs (checkpoints/latest), diffusers
    folders (model_index.json) and single weight files; LoRA files by their keys."""
    from scepter_core.tuners import lora_file_format
    models, loras = [], []
    for here, dirs, files in roots.walk():
        if (here / 'checkpoints' / 'latest').is_file() or (here / 'model_index.json').is_file():
            models.append(roots.relative(here))
            dirs[:] = []  # its insides are part of it
            continue
        for name in files:
            path = here / name
            if not name.endswith(WEIGHT_SUFFIXES) or path.is_symlink():
                continue
            try:
                is_lora = name.endswith('.safetensors') and bool(lora_file_format(str(path)))
            except ScepterError:
                continue  # unreadable: not offered
            (loras if is_lora else models).append(roots.relative(path))
    return models, loras


def find_recipes(roots: Roots, extra: Iterable[Path] = ()) -> list[str]:
    """Recipe files under the roots (YAML with a SOLVER block), then `extra` ones (the examples)."""
    found = []
    for here, _, files in roots.walk():
        for name in files:
            if name.endswith(RECIPE_SUFFIXES) and name != 'config.yaml':
                try:
                    head = (here / name).read_text(errors='replace')[:20000]
                except OSError:
                    continue
                if '\nSOLVER:' in '\n' + head:
                    found.append(roots.relative(here / name))
    return found + [str(p) for p in extra]

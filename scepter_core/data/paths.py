"""What the files a dataset reads may name: text that must be UTF-8 (an error names the file and
line), and image paths in list files (CSV, JSONL, TXT index) that must stay under the data root.

The rule for a path a list file names: relative paths are taken under the list's root and may
not climb out of it with `..`; an absolute local path or a URL (`http://`, `s3://`, ...) is read
only when the dataset block allows it (ALLOW_OUTSIDE_ROOT / ALLOW_REMOTE_PATHS), so that a
shared list file can neither read files elsewhere on the machine nor make the trainer go to
the network unless asked."""
from __future__ import annotations

import os
import posixpath

from ..errors import ConfigError

PATH_KEYS = {
    'ALLOW_REMOTE_PATHS': {'value': False, 'description': 'Let list files (CSV/JSONL/TXT) name URLs '
                                                          '(http://, s3://, ...); off: such a row is refused.'},
    'ALLOW_OUTSIDE_ROOT': {'value': False, 'description': 'Let list files name absolute paths or climb out of '
                                                          'their folder with `..`; off: such a row is refused.'},
}


def decode_text(data: bytes, file: str) -> str:
    """`data` as UTF-8 (a BOM is dropped); a ConfigError naming the file, line and byte otherwise."""
    try:
        return data.decode('utf-8-sig')
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b'\n') + 1
        raise ConfigError(f"'{file}' line {line}: not UTF-8 text (byte 0x{data[e.start]:02x}); "
                          f'save the file as UTF-8') from e


def row_path(root: str, name: str, where: str, allow_remote: bool = False, allow_outside: bool = False) -> str:
    """The path of an image a list file names, under `root` (see the module's rule); `where`
    ('FILE' line N) names the row in errors. An empty root accepts absolute local paths."""
    name = name.strip()
    if not name:
        raise ConfigError(f'{where}: the image path is empty')
    if '://' in name:
        if not allow_remote:
            raise ConfigError(f"{where}: '{name}' is a URL; list files may name remote files only with "
                              f'ALLOW_REMOTE_PATHS: true in the dataset block (nothing is downloaded unless asked)')
        return name
    if os.path.isabs(name):
        if root and not allow_outside:
            raise ConfigError(f"{where}: '{name}' is an absolute path outside the data root '{root}'; "
                              f'use a path relative to it, or set ALLOW_OUTSIDE_ROOT: true in the dataset block')
        return name
    if root and posixpath.normpath(name.replace('\\', '/')).split('/')[0] == '..' and not allow_outside:
        raise ConfigError(f"{where}: '{name}' climbs out of the data root '{root}'; "
                          f'set ALLOW_OUTSIDE_ROOT: true in the dataset block to allow it')
    return f"{root.rstrip('/')}/{name}" if root else name

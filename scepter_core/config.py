"""Config: YAML/JSON loading with `_BASE` inheritance, `${ENV}` substitution,
dotted overrides and YAML dumping. Declared parameters live in `params.py` and
validation against them in `registry.py`; this module knows nothing about classes."""
from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from .errors import ConfigError

BASE_KEYS = ('_BASE', '_BASE_RUN', '_BASE_MODEL')
REPLACE_KEY = '_REPLACE'  # `_REPLACE: true` in a block: replace the base's block, do not merge
SECRET_WORDS = {'TOKEN', 'SECRET', 'PASSWORD', 'PASSWD'}
SECRET_SUFFIXES = ('_AK', '_SK', 'ACCESS_KEY', 'SECRET_KEY', 'APIKEY', 'API_KEY')
_ENV_RE = re.compile(r'\$\{([A-Za-z_][A-Za-z0-9_]*)(?::([^}]*))?\}')


class _Loader(yaml.SafeLoader):
    """Safe loader that reads `1e-8` as a float (YAML 1.1 would keep a string)."""


class _Dumper(yaml.SafeDumper):
    """Safe dumper that quotes strings such as '1e-8' which `_Loader` would read as floats."""


_FLOAT_RE = re.compile(r'''^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$''', re.X)
for _cls in (_Loader, _Dumper):
    _cls.add_implicit_resolver('tag:yaml.org,2002:float', _FLOAT_RE, list('-+0123456789.'))


# A recipe holds a few thousand values; aliases may not expand it past this ("billion laughs":
# nine aliases per level, nine levels, is 9^9 values from 300 bytes).
MAX_VALUES = 100_000


def yaml_load(text: str) -> Any:
    """Parse YAML with the safe loader (no Python objects) and float-friendly numbers.
    Aliases that expand past MAX_VALUES values, or refer to their own node, are a ConfigError."""
    data = yaml.load(text, Loader=_Loader)
    _check_expansion(data)
    return data


def _check_expansion(data: Any) -> None:
    """Count the values `data` holds once its aliases are expanded, in time linear in the
    document (shared nodes are counted once, times the number of references)."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: Any) -> int:
        if not isinstance(node, (dict, list)):
            return 1
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise ConfigError('a YAML alias refers to the node that contains it (a recursive alias)')
        open_nodes.add(key)
        n = 1 + sum(size(v) for v in (node.values() if isinstance(node, dict) else node))
        if n > MAX_VALUES:
            raise ConfigError(f'YAML aliases expand to more than {MAX_VALUES} values (an alias bomb?); '
                              f'a recipe holds far fewer')
        open_nodes.discard(key)
        sizes[key] = n
        return n

    size(data)


def yaml_dump(data: Any, **kwargs: Any) -> str:
    """Dump plain data so that `yaml_load` reads back the same values."""
    kwargs.setdefault('sort_keys', False)
    kwargs.setdefault('allow_unicode', True)
    return yaml.dump(_plain(data), Dumper=_Dumper, **kwargs)


def parse_scalar(text: str, key: str = '') -> Any:
    """Parse an override or env value the way YAML would (`10`, `1e-4`, `[1,2]`, `null`).

    Text that only looks like a block mapping (`a photo: of a cat`) stays a string; a value
    that opens a flow list or mapping but does not parse is an error naming `key`."""
    try:
        value = yaml_load(text)
    except yaml.YAMLError as e:
        if text.strip()[:1] in ('[', '{', '"', "'"):
            problem = getattr(e, 'problem', None) or str(e).strip().splitlines()[0]
            where = f"'{key}': " if key else ''
            raise ConfigError(f'{where}cannot parse {text!r} as YAML: {problem}') from e
        return text
    if isinstance(value, dict) and not text.strip().startswith('{'):
        return text
    return value


def _wrap(value: Any) -> Any:
    if isinstance(value, Config):
        return value
    if isinstance(value, Mapping):
        return Config(value)
    if isinstance(value, (list, tuple)):
        return [_wrap(v) for v in value]
    return value


def _set_path(value: Any, path: str) -> None:
    if isinstance(value, Config):
        object.__setattr__(value, '_path', path)
        for k, v in value.items():
            _set_path(v, f'{path}.{k}')
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _set_path(v, f'{path}.{i}')


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class Config(dict):
    """A dict with attribute access: `cfg.SOLVER.MODEL.NAME`, `cfg['SOLVER']`.

    `Config(mapping)` wraps a dict; `Config.load(path)` reads a file. Scepter's
    spelling `Config(cfg_dict=..., load=False)` and `Config(cfg_file=...)` work too.
    """

    def __init__(self, data: Mapping | None = None, *, cfg_dict: Mapping | None = None,
                 cfg_file: str | os.PathLike | None = None, load: bool = True, logger: Any = None):
        super().__init__()
        if cfg_file is not None and load:
            data = _load_tree(Path(cfg_file))
        for k, v in dict(data or cfg_dict or {}).items():
            self[k] = v

    # ---- access -------------------------------------------------------------
    def __setitem__(self, key: str, value: Any) -> None:
        value = _wrap(value)
        _set_path(value, self._child_path(key))
        super().__setitem__(key, value)

    def _child_path(self, key: Any) -> str:
        return f'{self.path}.{key}' if self.path else str(key)

    def update(self, other: Mapping | Iterable = (), **kwargs: Any) -> None:  # type: ignore[override]
        for k, v in dict(other, **kwargs).items():
            self[k] = v

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]

    def copy(self) -> 'Config':
        """A shallow copy that keeps this block's path."""
        out = Config()
        object.__setattr__(out, '_path', self.path)
        dict.update(out, self)
        return out

    @property
    def path(self) -> str:
        """Dotted location of this block in the config it was loaded in ('' at the root)."""
        return self.__dict__.get('_path', '')

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(f"config has no key '{key}' (keys: {', '.join(self) or 'none'})") from None

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value

    def __delattr__(self, key: str) -> None:
        del self[key]

    def __deepcopy__(self, memo: dict) -> 'Config':
        return _rebuild(copy.deepcopy(_plain(self), memo), self.path)

    def __reduce__(self):
        return (_rebuild, (_plain(self), self.path))

    def have(self, key: str) -> bool:
        return key in self

    def deepcopy(self) -> 'Config':
        return copy.deepcopy(self)

    def to_dict(self) -> dict:
        return _plain(self)

    def get_path(self, path: str, default: Any = None) -> Any:
        """Read a dotted path such as `SOLVER.TRAIN_HOOKS.1.NAME`."""
        node: Any = self
        for part in path.split('.'):
            try:
                node = node[int(part)] if isinstance(node, list) else node[part]
            except (KeyError, IndexError, ValueError, TypeError):
                return default
        return node

    def set(self, path: str, value: Any) -> None:
        """Set a dotted path; list elements by index; missing mappings are created."""
        parts = path.split('.')
        node: Any = self
        for i, part in enumerate(parts[:-1]):
            node = _step(node, part, parts[:i + 1], create=True)
        last = parts[-1]
        if isinstance(node, list):
            idx = _index(node, last, parts)
            node[idx] = _wrap(value)
            _set_path(node[idx], self._child_path('.'.join(parts[:-1] + [str(idx)])))
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise ConfigError(f"cannot set '{path}': '{'.'.join(parts[:-1])}' is {type(node).__name__}, not a block")

    # ---- files ---------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike, overrides: Iterable[str] = ()) -> 'Config':
        cfg = cls(_load_tree(Path(path)))
        apply_overrides(cfg, overrides)
        return cfg

    def to_yaml(self, mask_secrets: bool = False) -> str:
        data = _mask(self.to_dict()) if mask_secrets else self.to_dict()
        return yaml_dump(data, default_flow_style=None)

    def dump(self, path: str | os.PathLike) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(self.to_yaml())

    def __repr__(self) -> str:
        return f'Config({dict.__repr__(self)})'


def _rebuild(data: dict, path: str) -> Config:
    """Unpickle / deep-copy helper: a Config whose blocks keep their dotted paths."""
    cfg = Config()
    object.__setattr__(cfg, '_path', path)
    for k, v in data.items():
        cfg[k] = v
    return cfg


def _index(node: list, part: str, parts: list[str]) -> int:
    try:
        idx = int(part)
        node[idx]
        return idx % len(node)
    except (ValueError, IndexError):
        raise ConfigError(f"'{'.'.join(parts)}': index '{part}' is not valid for a list of "
                          f"{len(node)} items") from None


def _step(node: Any, part: str, parts: list[str], create: bool) -> Any:
    if isinstance(node, list):
        return node[_index(node, part, parts)]
    if isinstance(node, dict):
        if part not in node or node[part] is None:
            if not create:
                raise ConfigError(f"no key '{'.'.join(parts)}'")
            if part.isdigit():  # `TRAIN_HOOKS.7.NAME` where the recipe holds no list: not a new block '7'
                raise ConfigError(f"'{'.'.join(parts)}': index {part} of a list that the recipe does not hold "
                                  f"(set the whole list: {'.'.join(parts[:-1])}=[...])")
            node[part] = Config()
        return node[part]
    raise ConfigError(f"'{'.'.join(parts[:-1])}' is {type(node).__name__}, not a block")


def is_secret_key(key: Any) -> bool:
    """HF_TOKEN, OSS_AK, DB_PASSWORD are secrets; TOKENIZER and MAX_TOKENS are not."""
    upper = str(key).upper()
    words = set(upper.split('_'))
    return bool(words & SECRET_WORDS) or any(upper.endswith(s) for s in SECRET_SUFFIXES)


def _mask(value: Any, key: str = '') -> Any:
    if isinstance(value, dict):
        return {k: _mask(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask(v, key) for v in value]
    if value not in (None, '') and is_secret_key(key):
        return '***'
    return value


# ---- loading -------------------------------------------------------------------

def _read_file(path: Path, referrer: str = '') -> Any:
    by = f' (named by {referrer})' if referrer else ''
    if path.is_dir():
        raise ConfigError(f"config file '{path}'{by} is a directory, not a YAML or JSON file")
    if not path.is_file():
        raise ConfigError(f"config file not found: '{path}'{by}")
    try:
        text = path.read_text(encoding='utf-8')
    except UnicodeDecodeError as e:
        line = path.read_bytes()[:e.start].count(b'\n') + 1
        raise ConfigError(f"'{path}' is not UTF-8 text (byte {e.start}, line {line}): save the recipe as "
                          f'UTF-8') from e
    except OSError as e:
        raise ConfigError(f"cannot read '{path}'{by}: {e.strerror or e}") from e
    try:
        if path.suffix.lower() == '.json':
            return json.loads(text)
        return yaml_load(text) or {}
    except ConfigError as e:
        raise ConfigError(f"'{path}': {e}") from e
    except RecursionError as e:
        raise ConfigError(f"cannot parse '{path}': nested too deeply") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"cannot parse '{path}'{_yaml_problem(e)}") from e
    except json.JSONDecodeError as e:
        raise ConfigError(f"cannot parse '{path}' (line {e.lineno}, column {e.colno}): {e.msg}") from e


def _yaml_problem(e: yaml.YAMLError) -> str:
    """' (line L, column C): problem' of a YAML error; a Python tag says it is refused."""
    mark = getattr(e, 'problem_mark', None) or getattr(e, 'context_mark', None)
    where = f' (line {mark.line + 1}, column {mark.column + 1})' if mark is not None else ''
    problem = getattr(e, 'problem', None) or str(e).strip().splitlines()[0]
    tag = re.search(r"tag '?tag:yaml.org,2002:(python/[^'\s]*)", problem)
    if tag:
        problem = f'the tag !!{tag.group(1)} is refused: recipes hold plain data, never Python objects'
    context = getattr(e, 'context', None)
    return f'{where}: {context + ", " if context and not tag else ""}{problem}'


def _load_tree(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"config inheritance loops: {' -> '.join(str(p) for p in seen + (path,))}")
    data = _read_file(path, f"_BASE in '{seen[-1]}'" if seen else '')
    if not isinstance(data, dict):
        raise ConfigError(f"'{path}' must hold a mapping at the top, not {type(data).__name__}")
    data = _resolve_bases(data, path, seen + (path,))
    try:
        return substitute_env(_drop_replace(data))
    except ConfigError as e:
        raise ConfigError(f"'{path}': {e}") from e


def _drop_replace(node: Any) -> Any:
    """Remove `_REPLACE` markers left in a file that had nothing to merge with."""
    if isinstance(node, dict):
        return {k: _drop_replace(v) for k, v in node.items() if k != REPLACE_KEY}
    if isinstance(node, list):
        return [_drop_replace(v) for v in node]
    return node


def _resolve_bases(node: Any, path: Path, seen: tuple[Path, ...]) -> Any:
    """Expand `_BASE*` keys at any depth: the named file is the base of that block."""
    if isinstance(node, list):
        return [_resolve_bases(v, path, seen) for v in node]
    if not isinstance(node, dict):
        return node
    bases = [node[k] for k in BASE_KEYS if k in node]
    child = {k: _resolve_bases(v, path, seen) for k, v in node.items() if k not in BASE_KEYS}
    merged: dict = {}
    for base in bases:
        for ref in base if isinstance(base, list) else [base]:
            ref = str(substitute_env(str(ref), f'{path.name}: _BASE'))
            merged = merge(merged, _load_tree(path.parent / ref, seen))
    return merge(merged, child) if bases else child


def merge(base: Any, child: Any) -> Any:
    """Recursive merge, child wins; a child block with `_REPLACE: true` replaces the base block."""
    if isinstance(child, dict):
        child = dict(child)
        if child.pop(REPLACE_KEY, False) or not isinstance(base, dict):
            return {k: merge(None, v) for k, v in child.items()}
        out = dict(base)
        for k, v in child.items():
            out[k] = merge(base.get(k), v)
        return out
    return child


def substitute_env(node: Any, path: str = '') -> Any:
    """Replace `${VAR}` and `${VAR:default}`; a value that is one whole reference is re-parsed."""
    if isinstance(node, dict):
        return {k: substitute_env(v, f'{path}.{k}' if path else str(k)) for k, v in node.items()}
    if isinstance(node, list):
        return [substitute_env(v, f'{path}.{i}') for i, v in enumerate(node)]
    if not isinstance(node, str) or '${' not in node:
        return node

    def one(m: re.Match) -> str:
        name, default = m.group(1), m.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        raise ConfigError(f"'{path}': environment variable '{name}' is not set and has no default "
                          f"(write ${{{name}:value}})")

    whole = _ENV_RE.fullmatch(node)
    out = _ENV_RE.sub(one, node)
    return parse_scalar(out) if whole else out


def apply_overrides(cfg: Config, overrides: Iterable[str]) -> Config:
    """Apply `KEY.PATH=value` strings; values are parsed as YAML scalars or lists."""
    for item in overrides or ():
        if '=' not in item:
            raise ConfigError(f"bad override '{item}': expected KEY.PATH=VALUE, e.g. SOLVER.MAX_STEPS=10")
        key, text = item.split('=', 1)
        key = key.strip()
        if not key or any(not p for p in key.split('.')):
            raise ConfigError(f"bad override '{item}': empty key segment")
        cfg.set(key, parse_scalar(text.strip(), key))
    return cfg

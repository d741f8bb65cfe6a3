"""Declared parameters (`para_dict`): one declaration per class fills defaults,
validates user configs and generates templates, so a default lives in one place.
This module reads declarations and checks one value against one; checking whole blocks
(nested ones through the registries) is `registry.check_config`, the path build takes.

An entry is `KEY: {'value': default, 'description': str}` with optional
`'type'` (a type or tuple; otherwise inferred from a non-None default),
`'choices'` (allowed values), `'min'` / `'max'` (bounds of a number, or of each number of
a list such as [height, width]) and `'registry'` (the key holds a block, or a list of
blocks, built from that registry, validated recursively)."""
from __future__ import annotations

import contextlib
import contextvars
import copy
import functools
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

from .config import Config
from .errors import ConfigError

ALWAYS_ALLOWED = ('NAME',)
_TYPE_NAMES = {bool: 'bool', int: 'int', float: 'float', str: 'str', list: 'list', dict: 'block'}


@dataclass
class Param:
    default: Any = None
    description: str = ''
    type: Any = None
    choices: tuple | None = None
    registry: str | None = None
    min: float | None = None
    max: float | None = None

    @property
    def types(self) -> tuple:
        if self.type is not None:
            t = self.type if isinstance(self.type, tuple) else (self.type,)
        elif self.default is not None:
            t = (type(self.default),)
        else:
            return ()
        out = []
        for x in t:
            out += {float: [float, int], tuple: [list, tuple], list: [list, tuple],
                    Config: [dict], dict: [dict]}.get(x, [x])
        return tuple(out)

    def type_name(self) -> str:
        t = self.type if self.type is not None else (type(self.default) if self.default is not None else None)
        if t is None:
            return 'any'
        ts = t if isinstance(t, tuple) else (t,)
        return ' | '.join(_TYPE_NAMES.get(x, getattr(x, '__name__', str(x))) for x in ts)


def as_param(entry: Any) -> Param:
    """A para_dict entry (raw dict, bare default or Param) as a Param."""
    if isinstance(entry, Param):
        return entry
    if isinstance(entry, dict) and ('value' in entry or 'description' in entry):
        return Param(default=entry.get('value'), description=entry.get('description', ''),
                     type=entry.get('type'), choices=tuple(entry['choices']) if entry.get('choices') else None,
                     registry=entry.get('registry'), min=entry.get('min'), max=entry.get('max'))
    return Param(default=entry)


def declared_params(cls: type) -> dict[str, Param]:
    """All parameters of a class: its own `para_dict` over those of its bases."""
    out: dict[str, Param] = {}
    for klass in reversed(cls.__mro__):
        own = klass.__dict__.get('para_dict')
        if isinstance(own, dict):
            # Scepter classes sometimes nest their dict under the registry name.
            if len(own) == 1 and isinstance(next(iter(own.values())), dict) and \
                    next(iter(own)).isupper() and 'value' not in next(iter(own.values())) and \
                    all(isinstance(v, dict) for v in next(iter(own.values())).values()):
                own = next(iter(own.values()))
            for k, v in own.items():
                out[k] = as_param(v)
    return out


# Strictness of the recipe being built. A recipe's top-level `STRICT` is outside the
# blocks that classes see, so the entry point that loaded the recipe (CLI command, launcher
# worker, test) publishes it here with `strict_mode(recipe_strict(cfg))`; every
# `prepare_config` below it (REG.build at any depth) then reads it. A context variable,
# not a global, so that threads and nested builds of other recipes do not leak into each other.
_STRICT: contextvars.ContextVar[bool | None] = contextvars.ContextVar('scepter_strict', default=None)


def strict_default() -> bool:
    """Unknown keys are errors unless the current recipe says `STRICT: false` (see
    `strict_mode`) or, when no recipe says anything, the environment sets SCEPTER_STRICT=0."""
    current = _STRICT.get()
    if current is not None:
        return current
    return os.environ.get('SCEPTER_STRICT', '1').strip().lower() not in ('0', 'false', 'no', 'off')


@contextlib.contextmanager
def strict_mode(strict: bool | None) -> Iterator[None]:
    """Build under a given strictness: `with strict_mode(recipe_strict(cfg)): SOLVERS.build(cfg.SOLVER)`.
    None leaves the choice to SCEPTER_STRICT."""
    token = _STRICT.set(strict)
    try:
        yield
    finally:
        _STRICT.reset(token)


def recipe_strict(cfg: Mapping) -> bool | None:
    """The top-level `STRICT` of a recipe (None when absent); a non-bool is a ConfigError."""
    value = cfg.get('STRICT')
    if value is not None and not isinstance(value, bool):
        raise ConfigError(f"'STRICT': expected bool, got {type(value).__name__} {value!r}")
    return value


def honours_recipe_strict(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator for entry points whose first argument is the whole recipe (a launcher's
    worker, a CLI command body): every build inside runs under the recipe's STRICT."""
    @functools.wraps(fn)
    def wrapper(cfg: Mapping, *args: Any, **kwargs: Any) -> Any:
        with strict_mode(recipe_strict(cfg)):
            return fn(cfg, *args, **kwargs)
    return wrapper


def _type_ok(value: Any, p: Param) -> bool:
    if value is None or not p.types:
        return True
    if isinstance(value, bool) and bool not in p.types:
        return False
    return isinstance(value, p.types)


def value_problem(p: Param, value: Any, kpath: str) -> str | None:
    """The one-line problem with `value` for the declared parameter `p`, or None."""
    if not _type_ok(value, p):
        return f"'{kpath}': expected {p.type_name()}, got {type(value).__name__} {value!r}"
    if p.choices and value is not None and value not in p.choices:
        return f"'{kpath}': {value!r} is not one of {', '.join(map(repr, p.choices))}"
    return _bounds_problem(p, value, kpath)


def _bounds_problem(p: Param, value: Any, kpath: str) -> str | None:
    if p.min is None and p.max is None:
        return None
    numbers = value if isinstance(value, (list, tuple)) else [value]
    for v in numbers:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if v != v or (p.min is not None and v < p.min) or (p.max is not None and v > p.max):
            low = '' if p.min is None else f'at least {p.min:g}'
            high = '' if p.max is None else f'at most {p.max:g}'
            return f"'{kpath}': must be {' and '.join(x for x in (low, high) if x)}, got {value!r}"
    return None


def fill_defaults(cls: type, cfg: Config) -> Config:
    """Fill missing keys in place from the class's declaration."""
    for key, p in declared_params(cls).items():
        if key not in cfg:
            cfg[key] = copy.deepcopy(p.default)
    return cfg

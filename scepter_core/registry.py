"""Registries, block validation and the single build function. Every registry is declared here.

Layering: params (declarations) <- registry (lookup, validate, build) <- base (the constructor
shape), templates, validate (whole recipes)."""
from __future__ import annotations

import contextvars
import inspect
import logging
from typing import Any, Callable, Iterator, Mapping

from .config import Config
from .errors import BuildError, ConfigError, RegistryError, ScepterError, did_you_mean
from .params import ALWAYS_ALLOWED, declared_params, fill_defaults, strict_default, value_problem


def _origin(obj: Any) -> str:
    return f'{obj.__module__}.{obj.__qualname__}'


class Registry:
    """A name -> class (or function) table. `build(cfg)` constructs `cfg.NAME`."""

    def __init__(self, name: str):
        self.name = name
        self._items: dict[str, Any] = {}
        self._aliases: dict[str, str] = {}

    # ---- registration ------------------------------------------------------------
    def _add(self, obj: Any, name: str | None, force: bool, aliases: tuple[str, ...]) -> Any:
        name = name or obj.__name__
        for key in (name, *aliases):
            old = self._items.get(key) or self._items.get(self._aliases.get(key, ''))
            # The same class seen again (a module imported twice, e.g. as a file and as a
            # module) is not a conflict; another class under the same name is.
            if old is not None and old is not obj and _origin(old) != _origin(obj) and not force:
                raise RegistryError(f"{self.name}: '{key}' is already registered by {_origin(old)}; "
                                    f"{_origin(obj)} cannot take it (pass force=True to replace)")
        self._aliases.pop(name, None)  # a name registered outright stops being an alias
        self._items[name] = obj
        for a in aliases:
            if force:
                self._items.pop(a, None)
            self._aliases[a] = name
        return obj

    def register_class(self, name: str | type | None = None, force: bool = False,
                       aliases: tuple[str, ...] = ()) -> Any:
        """Decorator: `@REG.register_class()`, `@REG.register_class('Name', aliases=(...))`;
        a bare `@REG.register_class` registers the class under its own name."""
        if isinstance(name, type):
            return self._add(name, None, force, tuple(aliases))

        def deco(cls: type) -> type:
            return self._add(cls, name, force, tuple(aliases))
        return deco

    def register_function(self, name: str | Callable | None = None, force: bool = False,
                          aliases: tuple[str, ...] = ()) -> Any:
        """Decorator for functions called as `fn(cfg, logger=None, **kwargs)` by build."""
        if callable(name):
            return self._add(name, None, force, tuple(aliases))

        def deco(fn: Callable) -> Callable:
            return self._add(fn, name, force, tuple(aliases))
        return deco

    # ---- lookup ------------------------------------------------------------------
    def names(self) -> list[str]:
        _load_builtins()
        return sorted(self._items)

    def name_of(self, obj: Any) -> str | None:
        """The name `obj` is registered under here, or None."""
        return next((n for n, o in self._items.items() if o is obj), None)

    def aliases(self) -> dict[str, str]:
        return dict(self._aliases)

    def __contains__(self, name: str) -> bool:
        _load_builtins()
        return name in self._items or name in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def get(self, name: str) -> Any:
        """The class or function registered as `name` (or one of its aliases)."""
        if not isinstance(name, str):
            raise RegistryError(f"{self.name}: NAME must be a string, got {type(name).__name__} {name!r}")
        if name not in self._items and name not in self._aliases:
            _load_builtins()
        key = self._aliases.get(name, name)
        if key not in self._items:
            raise RegistryError(f"{self.name} has no entry '{name}'." +
                                did_you_mean(str(name), list(self._items) + list(self._aliases)) +
                                f" ({len(self._items)} registered: `scepter registry list {self.name}`)")
        return self._items[key]

    def build(self, cfg: Config | dict, logger: logging.Logger | None = None, **kwargs: Any) -> Any:
        return build(self, cfg, logger=logger, **kwargs)

    def __repr__(self) -> str:
        return f'Registry({self.name}, {len(self._items)} entries)'


# ---- validation: one path, used by build and by classes constructed directly ----------------
def check_config(cls: type, cfg: Config, path: str = '', strict: bool | None = None,
                 logger: logging.Logger | None = None) -> list[str]:
    """Problems with `cfg` against `cls`'s declaration, nested blocks included, one line each
    (nothing is built). `path` (default: the block's own `cfg.path`) prefixes every key."""
    strict = strict_default() if strict is None else strict
    params = declared_params(cls)
    path = path or getattr(cfg, 'path', '')
    problems: list[str] = []
    for key, value in cfg.items():
        kpath = f'{path}.{key}' if path else str(key)
        if key in ALWAYS_ALLOWED or str(key).startswith('_'):
            continue
        if key not in params:
            if getattr(cls, 'strict_keys', True):
                msg = (f"'{kpath}': unknown key for {cls.__name__}." + did_you_mean(str(key), params) +
                       f" Valid keys: {', '.join(sorted(params)) or 'none'}")
                if strict:
                    problems.append(msg)
                else:
                    (logger or logging.getLogger('scepter')).warning('%s (ignored: STRICT is off)', msg)
            continue
        p = params[key]
        problem = value_problem(p, value, kpath)
        if problem:
            problems.append(problem)
        elif p.registry and value:
            problems += check_blocks(p.registry, value, kpath, strict, logger)
    return problems


def check_blocks(registry_name: str, value: Any, path: str, strict: bool | None = None,
                 logger: logging.Logger | None = None) -> list[str]:
    """Validate a block or a list of blocks of `registry_name`, recursively."""
    reg = REGISTRIES[registry_name]
    blocks = value if isinstance(value, list) else [value]
    problems: list[str] = []
    for i, block in enumerate(blocks):
        bpath = f'{path}.{i}' if isinstance(value, list) else path
        if isinstance(block, str):  # some keys accept a path instead of a block (e.g. a trained tuner)
            continue
        if not isinstance(block, dict):
            problems.append(f"'{bpath}': expected a block with NAME, got {type(block).__name__} {block!r}")
            continue
        if 'NAME' not in block:
            problems.append(f"'{bpath}': block has no NAME ({registry_name} entries: "
                            f"{', '.join(sorted(reg.names())[:8])}...)")
            continue
        try:
            target = reg.get(block['NAME'])
        except ConfigError as e:
            problems.append(f"'{bpath}.NAME': {e}")
            continue
        if isinstance(target, type):
            problems += check_config(target, block, bpath, strict, logger)
    return problems


def prepare_config(cls: type, cfg: Config | dict, path: str = '', strict: bool | None = None,
                   logger: logging.Logger | None = None) -> Config:
    """Validate then fill defaults; raise one ConfigError listing every problem."""
    cfg = cfg if isinstance(cfg, Config) else Config(cfg)
    problems = check_config(cls, cfg, path, strict, logger)
    if problems:
        raise ConfigError('\n'.join(problems))
    return fill_defaults(cls, cfg)


# (class, id(cfg)) of the block `build` has just prepared and is constructing, so that a
# class which also prepares its cfg when constructed directly does not check it twice.
_BUILDING: contextvars.ContextVar[tuple[type, int] | None] = contextvars.ContextVar('scepter_building',
                                                                                    default=None)


def prepared_by_build(cls: type, cfg: Config) -> bool:
    """True inside `build` for the very block it prepared for `cls`."""
    return _BUILDING.get() == (cls, id(cfg))


def build(registry: Registry, cfg: Config | dict | None, logger: logging.Logger | None = None,
          **kwargs: Any) -> Any:
    """Resolve `cfg.NAME`, validate and fill defaults, then call `Class(cfg, logger=logger, **kwargs)`.
    A registered function is called the same way."""
    if not isinstance(cfg, Mapping):
        got = 'nothing' if cfg is None else f'{type(cfg).__name__} {cfg!r}'
        raise ConfigError(f'{registry.name}: expected a config block with NAME to build from, got {got}')
    cfg = cfg if isinstance(cfg, Config) else Config(cfg)
    where = cfg.path or registry.name
    if 'NAME' not in cfg:
        raise ConfigError(f"'{where}': block has no NAME (one of {registry.name}: "
                          f"{', '.join(registry.names()[:10])})")
    try:
        target = registry.get(cfg.NAME)
    except RegistryError as e:
        raise RegistryError(f"'{where}.NAME': {e}") from None
    token = None
    if inspect.isclass(target):
        prepare_config(target, cfg, cfg.path, logger=logger)
        token = _BUILDING.set((target, id(cfg)))
    try:
        return target(cfg, logger=logger, **kwargs)
    except ScepterError:
        raise
    except Exception as e:
        raise BuildError(f"'{where}': building {registry.name} {cfg.NAME} ({_origin(target)}) failed: "
                         f"{type(e).__name__}: {e}") from e
    finally:
        if token is not None:
            _BUILDING.reset(token)


MODELS = Registry('MODELS')
BACKBONES = Registry('BACKBONES')
EMBEDDERS = Registry('EMBEDDERS')
TOKENIZERS = Registry('TOKENIZERS')
LOSSES = Registry('LOSSES')
DIFFUSIONS = Registry('DIFFUSIONS')
DIFFUSION_SAMPLERS = Registry('DIFFUSION_SAMPLERS')
NOISE_SCHEDULES = Registry('NOISE_SCHEDULES')
SOLVERS = Registry('SOLVERS')
HOOKS = Registry('HOOKS')
DATASETS = Registry('DATASETS')
TRANSFORMS = Registry('TRANSFORMS')
SAMPLERS = Registry('SAMPLERS')
OPTIMIZERS = Registry('OPTIMIZERS')
LR_SCHEDULERS = Registry('LR_SCHEDULERS')
METRICS = Registry('METRICS')
FILE_SYSTEMS = Registry('FILE_SYSTEMS')
TUNERS = Registry('TUNERS')

REGISTRIES: dict[str, Registry] = {r.name: r for r in (
    MODELS, BACKBONES, EMBEDDERS, TOKENIZERS, LOSSES, DIFFUSIONS, DIFFUSION_SAMPLERS,
    NOISE_SCHEDULES, SOLVERS, HOOKS, DATASETS, TRANSFORMS, SAMPLERS, OPTIMIZERS,
    LR_SCHEDULERS, METRICS, FILE_SYSTEMS, TUNERS)}

# Packages whose import registers the built-in classes; imported on first lookup so
# that `from scepter_core import MODELS` stays cheap.
BUILTIN_PACKAGES = (
    'scepter_core.fs', 'scepter_core.models', 'scepter_core.diffusion', 'scepter_core.data',
    'scepter_core.optim', 'scepter_core.hooks', 'scepter_core.solvers', 'scepter_core.metrics',
    'scepter_core.tuners',
)
_loaded = False


def _load_builtins() -> None:
    """Import the built-in packages once (their imports register the built-in classes)."""
    global _loaded
    if _loaded:
        return
    _loaded = True  # set first: a package being imported may itself look names up
    import importlib
    for mod in BUILTIN_PACKAGES:
        try:
            importlib.import_module(mod)
        except Exception:
            _loaded = False  # fail again next time rather than serve half-filled registries
            raise


def get_registry(name: str) -> Registry:
    """A registry by name, case-insensitive (`models` -> MODELS)."""
    key = name.upper()
    if key not in REGISTRIES:
        raise RegistryError(f"no registry '{name}'." + did_you_mean(key, REGISTRIES) +
                            f" Registries: {', '.join(REGISTRIES)}")
    return REGISTRIES[key]


def find_class(name: str, registry: str | None = None) -> tuple[Registry, Any]:
    """Find `name` in one registry or in all of them (for templates and the CLI)."""
    regs = [get_registry(registry)] if registry else list(REGISTRIES.values())
    for reg in regs:
        if name in reg:
            return reg, reg.get(name)
    everything = [n for r in regs for n in r.names()]
    where = f'in {registry}' if registry else 'in any registry'
    raise RegistryError(f"no registered class '{name}' {where}." + did_you_mean(name, everything))

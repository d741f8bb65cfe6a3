"""The one constructor shape, `Class(cfg, logger=None)`, and config templates."""
from __future__ import annotations

import logging
from typing import Any

import yaml

from .config import Config
from .params import Param, _as_param, declared_params, prepare_config


def get_logger(name: str = 'scepter') -> logging.Logger:
    return logging.getLogger(name)


class Configurable:
    """Mixin: stores `cfg` (defaults filled, validated) and `logger`.

    Works whether the object came from `REG.build(cfg)` or was constructed directly.
    """

    para_dict: dict = {}
    strict_keys: bool = True

    def _init_config(self, cfg: Config | dict | None, logger: logging.Logger | None) -> None:
        cfg = Config(cfg or {}) if not isinstance(cfg, Config) else cfg
        self.cfg = prepare_config(type(self), cfg, cfg.path, logger=logger)
        self.logger = logger or get_logger()

    @classmethod
    def get_config_template(cls) -> str:
        from .registry import REGISTRIES
        module = next((r.name for r in REGISTRIES.values()
                       if r._items.get(cls.__name__) is cls), 'MODULE')
        return dict_to_yaml(module, cls.__name__, declared_params(cls), set_name=True)


class BaseObject(Configurable):
    """Base for plain (non-nn.Module) registered classes."""

    def __init__(self, cfg: Config | dict | None = None, logger: logging.Logger | None = None):
        self._init_config(cfg, logger)


def _yaml_value(value: Any) -> str:
    text = yaml.safe_dump(Config(value).to_dict() if isinstance(value, dict) else value,
                          default_flow_style=True, width=1 << 16).strip()
    return text[:-4].strip() if text.endswith('\n...') else text.removesuffix('...').strip()


def _block_lines(params: dict[str, Param], indent: int, seen: tuple[str, ...]) -> list[str]:
    from .registry import REGISTRIES
    pad = ' ' * indent
    lines: list[str] = []
    for key, p in params.items():
        desc = ' '.join(p.description.split())
        extra = f"; one of {', '.join(map(str, p.choices))}" if p.choices else ''
        lines.append(f'{pad}# {desc} ({p.type_name()}{extra})' if desc else f'{pad}# ({p.type_name()}{extra})')
        default = p.default
        nested = (p.registry and isinstance(default, dict) and 'NAME' in default
                  and default['NAME'] not in seen and default['NAME'] in REGISTRIES[p.registry])
        if nested:
            sub_cls = REGISTRIES[p.registry].get(default['NAME'])
            sub = declared_params(sub_cls)
            for k, v in default.items():  # the default block's own values win over the sub-class's
                if k != 'NAME':
                    sub[k] = Param(v, sub.get(k, Param()).description, sub.get(k, Param()).type,
                                   sub.get(k, Param()).choices, sub.get(k, Param()).registry)
            lines.append(f'{pad}{key}:')
            lines.append(f"{pad}  NAME: {default['NAME']}")
            lines += _block_lines(sub, indent + 2, seen + (default['NAME'],))
        elif isinstance(default, dict) and default:
            lines.append(f'{pad}{key}:')
            lines += [f'{pad}  {line}' for line in
                      yaml.safe_dump(Config(default).to_dict(), sort_keys=False).splitlines()]
        else:
            lines.append(f'{pad}{key}: {_yaml_value(default)}')
    return lines


def dict_to_yaml(module_name: str, name: str, json_config: dict, set_name: bool = False) -> str:
    """A commented YAML template for class `name` (Scepter's signature).

    `json_config` is a para_dict (raw or normalised). The result parses as YAML; the
    block under `module_name` rebuilds the class with its defaults."""
    params = {k: _as_param(v) for k, v in json_config.items()}
    lines = [f'{module_name}:']
    if set_name:
        lines.append(f'  NAME: {name}')
    lines += _block_lines(params, 2, (name,))
    return '\n'.join(lines) + '\n'

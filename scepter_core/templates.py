"""Config templates (`scepter config template NAME`), generated from the declared
parameters so that a template can never drift from the code."""
from __future__ import annotations

import dataclasses
from typing import Any

from .config import yaml_dump
from .params import Param, as_param, declared_params
from .registry import REGISTRIES


def _yaml_value(value: Any) -> str:
    """One value in YAML flow style, readable back by `yaml_load` as the same value."""
    return yaml_dump(value, default_flow_style=True, width=1 << 16).strip().removesuffix('...').strip()


def _nested_params(p: Param, seen: tuple[str, ...]) -> dict[str, Param] | None:
    """For a key holding a block of a registry with a registered default NAME: the sub-class's
    parameters, with the values of the default block in place of the sub-class's defaults."""
    default = p.default
    if not (p.registry and isinstance(default, dict) and isinstance(default.get('NAME'), str)):
        return None
    name = default['NAME']
    if name in seen or name not in REGISTRIES[p.registry]:
        return None
    sub_cls = REGISTRIES[p.registry].get(name)
    if not isinstance(sub_cls, type):
        return None
    sub = {'NAME': Param(name, f'{p.registry} entry.')}
    sub.update(declared_params(sub_cls))
    for k, v in default.items():
        sub[k] = dataclasses.replace(sub.get(k, Param()), default=v)
    return sub


def _comment(p: Param) -> str:
    desc = ' '.join((p.description or '').split())
    extra = f"; one of {', '.join(map(str, p.choices))}" if p.choices else ''
    extra += f'; >= {p.min:g}' if p.min is not None else ''
    extra += f'; <= {p.max:g}' if p.max is not None else ''
    kind = f'{p.type_name()}{extra}' + (f'; a {p.registry} block' if p.registry else '')
    return f'# {desc} ({kind})' if desc else f'# ({kind})'


def _needs_block_style(value: Any) -> bool:
    """Mappings and lists of blocks read better as indented YAML than on one line."""
    if isinstance(value, dict):
        return bool(value)
    return isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value)


def _block_lines(params: dict[str, Param], indent: int, seen: tuple[str, ...]) -> list[str]:
    pad = ' ' * indent
    lines: list[str] = []
    for key, p in params.items():
        if key == 'NAME' and indent > 2:  # the NAME of a nested block, written first
            lines.append(f'{pad}NAME: {_yaml_value(p.default)}')
            continue
        lines.append(pad + _comment(p))
        nested = _nested_params(p, seen)
        if nested is not None:
            lines.append(f'{pad}{key}:')
            lines += _block_lines(nested, indent + 2, seen + (nested['NAME'].default,))
        elif _needs_block_style(p.default):
            lines.append(f'{pad}{key}:')
            lines += [f'{pad}  {line}' for line in yaml_dump(p.default).splitlines()]
        else:
            lines.append(f'{pad}{key}: {_yaml_value(p.default)}')
    return lines


def dict_to_yaml(module_name: str, name: str, json_config: dict, set_name: bool = False) -> str:
    """A commented YAML template for class `name` (Scepter's signature).

    `json_config` is a para_dict (raw or normalised). The result parses as YAML; the
    block under `module_name` rebuilds the class with its defaults."""
    params = {k: as_param(v) for k, v in json_config.items()}
    lines = [f'{module_name}:']
    if set_name:
        lines.append(f'  NAME: {name}')
    lines += _block_lines(params, 2, (name,))
    return '\n'.join(lines) + '\n'


def config_template(obj: Any, registry: str | None = None, name: str | None = None) -> str:
    """The template of a registered class (or function), found in `registry` or in any."""
    regs = [REGISTRIES[registry]] if registry else list(REGISTRIES.values())
    for reg in regs:
        found = reg.name_of(obj)
        if found is not None:
            registry, name = reg.name, name or found
            break
    name = name or obj.__name__
    params = declared_params(obj) if isinstance(obj, type) else {}
    return dict_to_yaml(registry or 'MODULE', name, params, set_name=True)

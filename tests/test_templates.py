"""Templates of every registered class: valid YAML, equal to the declared defaults, and
rebuilding the class from the template gives an object configured with those defaults."""
from __future__ import annotations

import inspect

import pytest
import torch
import yaml

from scepter_core.base import BaseObject
from scepter_core.config import Config
from scepter_core.errors import CheckpointError, ConfigError, ScepterError
from scepter_core.params import declared_params
from scepter_core.registry import REGISTRIES, _load_builtins
from scepter_core.templates import config_template, dict_to_yaml

_load_builtins()
CLASSES = [(reg.name, name) for reg in REGISTRIES.values() for name in reg.names()
           if inspect.isclass(reg.get(name))]


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _runtime_kwargs(registry: str) -> dict:
    """Objects some registries are built around at run time (tiny stand-ins of the real ones)."""
    if registry == 'OPTIMIZERS':
        return {'parameters': [torch.nn.Parameter(torch.zeros(2))]}
    if registry == 'LR_SCHEDULERS':
        return {'optimizer': torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1), 'total_steps': 10}
    if registry == 'SAMPLERS':
        return {'data_size': 4}
    return {}


def _needs_inputs(exc: BaseException, registry: str, block: dict) -> BaseException | None:
    """The error in an exception's chain that says the class needs files or data the
    template cannot hold: a file error (weights, hub files), or a ScepterError naming a key
    that the template leaves empty (a dataset's index file, a metric's weights)."""
    empty = [f'{registry}.{k}' for k, v in block.items() if v in (None, '', [], {})]
    while exc is not None:
        if isinstance(exc, (OSError, CheckpointError)):
            return exc
        if isinstance(exc, ScepterError) and any(key in str(exc) for key in empty):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _build(registry: str, block: dict):
    """Build from a template block; parameters go to the meta device, so that the full-size
    defaults (SD 1.5's UNet) cost neither time nor memory. Falls back to the CPU for
    constructors that compute with their tensors."""
    reg = REGISTRIES[registry]
    try:
        with torch.device('meta'):
            return reg.build(Config({registry: block})[registry], **_runtime_kwargs(registry))
    except Exception as e:  # noqa: BLE001 - decide below whether the meta device was the cause
        if 'meta' not in str(e).lower() or _needs_inputs(e, registry, block):
            raise
    return reg.build(Config({registry: block})[registry], **_runtime_kwargs(registry))


def _assert_declared_within(want: dict, got: dict, where: str) -> None:
    """Every declared key of a nested default block is in the expanded template block with its
    value; blocks nested in it (a NAME of their own) are expanded too, so they compare the same way."""
    for k, v in want.items():
        if isinstance(v, dict) and 'NAME' in v:
            _assert_declared_within(v, got[k], f'{where}.{k}')
        else:
            assert got[k] == v, f'{where}.{k}'


@pytest.mark.parametrize('registry, name', CLASSES, ids=[f'{r}.{n}' for r, n in CLASSES])
def test_template_parses_and_rebuilds_with_its_defaults(registry, name):
    cls = REGISTRIES[registry].get(name)
    text = config_template(cls, registry)
    block = yaml.safe_load(text)[registry]
    assert block['NAME'] == name
    for key, p in declared_params(cls).items():
        want = _plain(p.default)
        if p.registry and isinstance(want, dict) and 'NAME' in want:  # expanded nested block
            _assert_declared_within(want, block[key], key)
        else:
            assert block[key] == want, key
    assert set(block) == {'NAME', *declared_params(cls)}
    try:
        obj = _build(registry, block)
    except Exception as e:  # noqa: BLE001
        missing = _needs_inputs(e, registry, block)
        if missing is None:
            raise
        pytest.skip(f'needs files or data to build: {type(missing).__name__}: {str(missing)[:160]}')
    if hasattr(obj, 'cfg'):
        assert {k: _plain(obj.cfg[k]) for k in block} == block


def test_nested_blocks_appear_as_nested_yaml(temp_registry):
    reg = temp_registry('TEMPLATE_TOYS')

    @reg.register_class()
    class Inner(BaseObject):
        """Inner."""
        para_dict = {'DEPTH': {'value': 2, 'description': 'Layers.'},
                     'EPS': {'value': 1e-8, 'description': 'Tiny.'},
                     'KIND': {'value': '1e-8', 'description': 'A string that looks like a number.'}}

    @reg.register_class()
    class Outer(BaseObject):
        """Outer."""
        para_dict = {'INNER': {'value': {'NAME': 'Inner', 'DEPTH': 3}, 'registry': 'TEMPLATE_TOYS',
                               'description': 'The inner block.'},
                     'LIST': {'value': [{'NAME': 'Inner'}], 'registry': 'TEMPLATE_TOYS',
                              'description': 'Blocks.'},
                     'CHOICE': {'value': 'a', 'choices': ('a', 'b'), 'description': 'Pick one.'}}

    text = Outer.get_config_template()
    assert text.startswith('TEMPLATE_TOYS:\n  NAME: Outer\n')
    assert '  # The inner block. (block; a TEMPLATE_TOYS block)\n  INNER:\n    NAME: Inner\n' in text
    assert '    # Layers. (int)\n    DEPTH: 3\n' in text
    assert "  # Pick one. (str; one of a, b)\n  CHOICE: a\n" in text
    data = yaml.safe_load(text)['TEMPLATE_TOYS']
    assert data == {'NAME': 'Outer', 'INNER': {'NAME': 'Inner', 'DEPTH': 3, 'EPS': 1e-8, 'KIND': '1e-8'},
                    'LIST': [{'NAME': 'Inner'}], 'CHOICE': 'a'}
    built = reg.build(data)
    assert built.cfg.INNER.to_dict() == data['INNER']


def test_dict_to_yaml_takes_a_raw_para_dict_like_scepter():
    text = dict_to_yaml('MODELS', 'Thing', {'A': {'value': None, 'description': 'x'}, 'B': {'value': [1, 2]}},
                        set_name=True)
    assert yaml.safe_load(text) == {'MODELS': {'NAME': 'Thing', 'A': None, 'B': [1, 2]}}


@pytest.mark.parametrize('registry, name', CLASSES, ids=[f'{r}.{n}' for r, n in CLASSES])
def test_every_class_rejects_an_unknown_key(registry, name):
    """Every registered class validates its block (directly or through REG.build)."""
    cls = REGISTRIES[registry].get(name)
    if not getattr(cls, 'strict_keys', True):
        pytest.skip(f'{name} opts out of unknown-key checks (strict_keys = False)')
    block = Config({registry: {'NAME': name, 'NOT_A_KEY_ANYWHERE': 1}})[registry]
    with torch.device('meta'), pytest.raises(ConfigError) as info:
        REGISTRIES[registry].build(block, **_runtime_kwargs(registry))
    assert str(info.value).startswith(f"'{registry}.NOT_A_KEY_ANYWHERE': unknown key for {cls.__name__}.")

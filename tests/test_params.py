"""Declared parameters: inheritance, defaults, validation messages and the STRICT switch."""
from __future__ import annotations

import logging

import pytest

from scepter_core.base import BaseObject
from scepter_core.config import Config
from scepter_core.errors import ConfigError
from scepter_core.params import declared_params, honours_recipe_strict, recipe_strict, strict_default, strict_mode
from scepter_core.registry import check_blocks, check_config, prepare_config


class Parent(BaseObject):
    para_dict = {
        'LAYER': {'value': 'last', 'description': 'Which layer.', 'choices': ('last', 'hidden')},
        'MAX_LENGTH': {'value': 77, 'description': 'Tokens.'},
        'SCALE': {'value': 1.0, 'description': 'A float accepts ints.'},
    }


class Child(Parent):
    para_dict = {
        'MAX_LENGTH': {'value': 64, 'description': 'Shorter.'},
        'BETAS': {'value': [0.9, 0.999], 'description': 'A list.'},
        'PATH': {'value': None, 'type': str, 'description': 'Optional string.'},
        'ANY': {'value': None, 'description': 'Anything.'},
        'FLAG': {'value': False, 'description': 'A bool.'},
    }


class Lenient(Parent):
    strict_keys = False


def test_subclasses_extend_and_override_parents():
    params = declared_params(Child)
    assert list(params) == ['LAYER', 'MAX_LENGTH', 'SCALE', 'BETAS', 'PATH', 'ANY', 'FLAG']
    assert params['MAX_LENGTH'].default == 64 and params['LAYER'].default == 'last'
    assert declared_params(Parent)['MAX_LENGTH'].default == 77


def test_defaults_fill_missing_keys_and_are_copies():
    a, b = Child({'LAYER': 'hidden'}), Child()
    assert a.cfg.to_dict() == {'LAYER': 'hidden', 'MAX_LENGTH': 64, 'SCALE': 1.0, 'BETAS': [0.9, 0.999],
                               'PATH': None, 'ANY': None, 'FLAG': False}
    a.cfg.BETAS.append(1)
    assert b.cfg.BETAS == [0.9, 0.999] and Child.para_dict['BETAS']['value'] == [0.9, 0.999]


def test_values_of_the_declared_type_pass():
    cfg = Config({'SCALE': 2, 'BETAS': (0.5, 0.6), 'PATH': 'x', 'ANY': {'K': 1}, 'FLAG': True, 'MAX_LENGTH': None})
    assert check_config(Child, cfg) == []


@pytest.mark.parametrize('key, value, expected', [
    ('MAX_LENGTH', 'abc', "'M.MAX_LENGTH': expected int, got str 'abc'"),
    ('MAX_LENGTH', 1.5, "'M.MAX_LENGTH': expected int, got float 1.5"),
    ('MAX_LENGTH', True, "'M.MAX_LENGTH': expected int, got bool True"),
    ('FLAG', 1, "'M.FLAG': expected bool, got int 1"),
    ('BETAS', 0.9, "'M.BETAS': expected list, got float 0.9"),
    ('PATH', 3, "'M.PATH': expected str, got int 3"),
    ('LAYER', 'first', "'M.LAYER': 'first' is not one of 'last', 'hidden'"),
])
def test_wrong_values_name_path_expected_type_and_value(key, value, expected):
    assert check_config(Child, Config({key: value}), 'M') == [expected]


def test_unknown_key_names_class_and_suggests_closest():
    problems = check_config(Child, Config({'MAX_LENGHT': 3}), 'SOLVER.MODEL.COND_STAGE_MODEL')
    assert len(problems) == 1
    assert problems[0].startswith("'SOLVER.MODEL.COND_STAGE_MODEL.MAX_LENGHT': unknown key for Child. "
                                  "Did you mean 'MAX_LENGTH'?")
    assert 'Valid keys: ANY, BETAS, FLAG, LAYER, MAX_LENGTH, PATH, SCALE' in problems[0]


def test_prepare_config_raises_one_error_listing_every_problem():
    with pytest.raises(ConfigError) as info:
        prepare_config(Child, {'MAX_LENGTH': 'x', 'LAYR': 'last'}, 'B')
    lines = str(info.value).splitlines()
    assert lines[0].startswith("'B.MAX_LENGTH': expected int") and lines[1].startswith("'B.LAYR': unknown key")


def test_direct_construction_validates_too():
    with pytest.raises(ConfigError, match="'SCALE': expected float, got str"):
        Parent({'SCALE': 'big'})


def test_strict_env_turns_unknown_keys_into_warnings(monkeypatch, caplog):
    monkeypatch.setenv('SCEPTER_STRICT', '0')
    assert strict_default() is False
    with caplog.at_level(logging.WARNING, logger='scepter'):
        obj = Child({'EXTRA': 1})
    assert obj.cfg.EXTRA == 1 and "'EXTRA': unknown key for Child" in caplog.text
    with pytest.raises(ConfigError, match='expected int'):  # type errors stay errors
        Child({'MAX_LENGTH': 'x'})


def test_strict_mode_context_wins_over_env_and_is_restored(monkeypatch):
    monkeypatch.setenv('SCEPTER_STRICT', '0')
    with strict_mode(True):
        assert strict_default() is True
        with pytest.raises(ConfigError, match='unknown key'):
            Child({'EXTRA': 1})
        with strict_mode(None):  # None defers to the environment
            assert strict_default() is False
    assert strict_default() is False
    monkeypatch.delenv('SCEPTER_STRICT')
    assert strict_default() is True
    with strict_mode(False):
        assert Child({'EXTRA': 1}).cfg.EXTRA == 1


def test_recipe_strict_reads_top_level_key():
    assert recipe_strict(Config({'STRICT': False})) is False
    assert recipe_strict(Config({})) is None
    with pytest.raises(ConfigError, match="'STRICT': expected bool, got str 'no'"):
        recipe_strict(Config({'STRICT': 'no'}))


def test_entry_point_decorator_applies_the_recipe_strict_to_builds_inside(monkeypatch):
    monkeypatch.delenv('SCEPTER_STRICT', raising=False)

    @honours_recipe_strict
    def worker(recipe, extra):
        return Child(recipe.SOLVER), extra

    lenient = Config({'STRICT': False, 'SOLVER': {'EXTRA': 1}})
    assert worker(lenient, 'x')[0].cfg.EXTRA == 1
    assert strict_default() is True  # restored after the entry point returns
    with pytest.raises(ConfigError, match="'SOLVER.EXTRA': unknown key for Child"):
        worker(Config({'SOLVER': {'EXTRA': 1}}), 'x')


def test_per_class_opt_out_accepts_unknown_keys():
    assert Lenient({'DOC_ONLY': 'x'}).cfg.DOC_ONLY == 'x'
    with pytest.raises(ConfigError, match='expected int'):
        Lenient({'MAX_LENGTH': 'x'})


def test_nested_blocks_are_checked_recursively(temp_registry):
    temp_registry('TOY_PARAMS').register_class('Child')(Child)

    class Holder(BaseObject):
        para_dict = {'SUB': {'value': None, 'registry': 'TOY_PARAMS', 'description': 'One block.'},
                     'SUBS': {'value': [], 'registry': 'TOY_PARAMS', 'description': 'Blocks.'}}

    cfg = Config({'SOLVER': {'SUB': {'NAME': 'Child', 'MAX_LENGTH': 'x'},
                             'SUBS': [{'NAME': 'Child'}, {'NAME': 'Chidl'}, {'LAYER': 'last'}, 3]}})
    problems = check_config(Holder, cfg.SOLVER, cfg.SOLVER.path)
    assert problems[0] == "'SOLVER.SUB.MAX_LENGTH': expected int, got str 'x'"
    assert problems[1].startswith("'SOLVER.SUBS.1.NAME': TOY_PARAMS has no entry 'Chidl'. Did you mean 'Child'?")
    assert problems[2].startswith("'SOLVER.SUBS.2': block has no NAME (TOY_PARAMS entries: Child")
    assert problems[3] == "'SOLVER.SUBS.3': expected a block with NAME, got int 3"
    assert len(problems) == 4
    assert check_blocks('TOY_PARAMS', {'NAME': 'Child', 'NAME_': 1}, 'X')[0].startswith("'X.NAME_': unknown key")


class Plain:
    """Not Configurable: build alone checks and fills its cfg."""
    para_dict = {'SIZE': {'value': 8, 'description': 'A size.'}}

    def __init__(self, cfg, logger=None):
        self.cfg = cfg


def test_build_checks_every_class_once_on_one_path(temp_registry, caplog):
    reg = temp_registry('TOY_ONCE')
    reg.register_class('Child')(Child)
    reg.register_class('Plain')(Plain)
    assert reg.build({'NAME': 'Plain'}).cfg.SIZE == 8  # filled by build
    with pytest.raises(ConfigError, match="'SIZE': expected int, got str 'x'"):
        reg.build({'NAME': 'Plain', 'SIZE': 'x'})
    with strict_mode(False), caplog.at_level(logging.WARNING, logger='scepter'):
        built = reg.build({'NAME': 'Child', 'EXTRA': 1})
        direct = Child(Config({'EXTRA': 2}))
    # the build checked the block and the constructor did not check it again; direct construction checks
    assert caplog.text.count("unknown key for Child") == 2, caplog.text
    assert built.cfg.MAX_LENGTH == 64 and direct.cfg.MAX_LENGTH == 64


class Bounded(BaseObject):
    para_dict = {'STEPS': {'value': 10, 'min': 0, 'description': 'Steps.'},
                 'LR': {'value': 1e-4, 'min': 0, 'description': 'Rate.'},
                 'SIZE': {'value': [64, 64], 'type': (int, list), 'min': 1, 'max': 4096, 'description': 'Sides.'}}


@pytest.mark.parametrize('key, value, ok', [
    ('STEPS', 0, True), ('STEPS', -1, False), ('LR', 0.0, True), ('LR', -1e-4, False), ('LR', float('nan'), False),
    ('SIZE', 4096, True), ('SIZE', [64, 4097], False), ('SIZE', [0, 64], False), ('SIZE', [16, 32], True)])
def test_declared_bounds_name_key_and_value(key, value, ok):
    problems = check_config(Bounded, Config({key: value}), 'X')
    assert (problems == []) == ok, problems
    if not ok:
        assert problems[0].startswith(f"'X.{key}': must be at least") and repr(value) in problems[0]

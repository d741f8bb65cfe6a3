"""Registries: registration, aliases, build and its error messages."""
from __future__ import annotations

import importlib
import logging
import subprocess
import sys

import pytest

import scepter_core
from scepter_core.base import BaseObject
from scepter_core.config import Config
from scepter_core.errors import BuildError, ConfigError, RegistryError
from scepter_core.params import recipe_strict, strict_mode
from scepter_core.registry import REGISTRIES, find_class

ALL_REGISTRIES = ('MODELS', 'BACKBONES', 'EMBEDDERS', 'TOKENIZERS', 'LOSSES', 'DIFFUSIONS',
                  'DIFFUSION_SAMPLERS', 'NOISE_SCHEDULES', 'SOLVERS', 'HOOKS', 'DATASETS', 'TRANSFORMS',
                  'SAMPLERS', 'OPTIMIZERS', 'LR_SCHEDULERS', 'METRICS', 'FILE_SYSTEMS', 'TUNERS')


@pytest.fixture
def reg(temp_registry):
    return temp_registry('TOYS')


class Leaf(BaseObject):
    """A leaf."""
    para_dict = {'SIZE': {'value': 3, 'description': 'Size.'}, 'FAIL': {'value': False, 'description': 'Raise.'}}

    def __init__(self, cfg, logger=None, extra=None):
        super().__init__(cfg, logger)
        if self.cfg.FAIL:
            raise ValueError('leaf exploded')
        self.extra = extra


class Tree(BaseObject):
    """Builds a leaf from a nested block."""
    para_dict = {'LEAF': {'value': {'NAME': 'Leaf'}, 'registry': 'TOYS', 'description': 'The leaf.'}}

    def __init__(self, cfg, logger=None):
        super().__init__(cfg, logger)
        self.leaf = REGISTRIES['TOYS'].build(self.cfg.LEAF, logger=self.logger)


def test_every_registry_is_declared_and_importable_from_the_package():
    assert set(ALL_REGISTRIES) <= set(REGISTRIES)
    for name in ALL_REGISTRIES:
        assert getattr(scepter_core, name) is REGISTRIES[name]
    from scepter_core import Config as C, FS, dict_to_yaml, we  # noqa: F401  (the quick start's imports)
    assert C is Config


def test_register_class_and_build_from_config_or_dict(reg):
    reg.register_class()(Leaf)
    logger = logging.getLogger('toy')
    a = reg.build(Config({'NAME': 'Leaf', 'SIZE': 5}), logger=logger, extra='kw')
    b = reg.build({'NAME': 'Leaf'})
    assert isinstance(a, Leaf) and a.cfg.SIZE == 5 and a.extra == 'kw' and a.logger is logger
    assert b.cfg.SIZE == 3 and b.cfg.FAIL is False
    assert 'Leaf' in reg and reg.names() == ['Leaf'] and reg.get('Leaf') is Leaf and len(reg) == 1


def test_bare_decorators_register_under_own_name(reg):
    assert reg.register_class(Leaf) is Leaf

    @reg.register_function
    def double(cfg, logger=None):
        return cfg.X * 2

    assert reg.names() == ['Leaf', 'double'] and reg.build({'NAME': 'double', 'X': 4}) == 8


def test_register_function_is_called_with_cfg_and_kwargs(reg):
    @reg.register_function('make_pair')
    def make(cfg, logger=None, scale=1):
        return cfg.A * scale, logger

    assert reg.build({'NAME': 'make_pair', 'A': 2}, scale=3) == (6, None)


def test_register_under_another_name_with_aliases(reg):
    reg.register_class('BigLeaf', aliases=('Leaf', 'leaf_v1'))(Leaf)
    assert reg.get('leaf_v1') is reg.get('Leaf') is reg.get('BigLeaf') is Leaf
    assert reg.build({'NAME': 'leaf_v1'}).cfg.SIZE == 3
    assert reg.aliases() == {'Leaf': 'BigLeaf', 'leaf_v1': 'BigLeaf'} and reg.name_of(Leaf) == 'BigLeaf'


def test_reregistering_names_both_import_paths_unless_forced(reg):
    reg.register_class('Leaf')(Leaf)
    reg.register_class('Leaf')(Leaf)  # the same class again is harmless

    class Other(BaseObject):
        pass

    with pytest.raises(RegistryError) as info:
        reg.register_class('Leaf')(Other)
    msg = str(info.value)
    assert f"'Leaf' is already registered by {__name__}.Leaf" in msg
    assert f'{__name__}.test_reregistering_names_both_import_paths_unless_forced.<locals>.Other' in msg
    assert 'force=True' in msg
    reg.register_class('Leaf', force=True)(Other)
    assert reg.get('Leaf') is Other


def test_alias_conflicts_and_forced_replacement_of_an_alias(reg):
    reg.register_class('Leaf', aliases=('L',))(Leaf)

    class Other(BaseObject):
        pass

    with pytest.raises(RegistryError, match="'L' is already registered"):
        reg.register_class('Other', aliases=('L',))(Other)
    reg.register_class('L', force=True)(Other)  # a real name replaces the alias
    assert reg.get('L') is Other and reg.get('Leaf') is Leaf


def test_unknown_name_lists_close_matches(reg):
    reg.register_class()(Leaf)
    reg.register_class()(Tree)
    with pytest.raises(RegistryError) as info:
        reg.build(Config({'SOLVER': {'MODEL': {'NAME': 'Leef'}}}).SOLVER.MODEL)
    assert str(info.value).startswith("'SOLVER.MODEL.NAME': TOYS has no entry 'Leef'. Did you mean 'Leaf'?")
    assert isinstance(info.value, ConfigError) and info.value.exit_code == 2


def test_missing_name_and_non_block_are_config_errors(reg):
    reg.register_class()(Leaf)
    with pytest.raises(ConfigError, match=r"^'A.B': block has no NAME \(one of TOYS: Leaf\)"):
        reg.build(Config({'A': {'B': {'SIZE': 1}}}).A.B)
    with pytest.raises(ConfigError, match='expected a config block with NAME to build from, got nothing'):
        reg.build(None)
    with pytest.raises(ConfigError, match="got str 'Leaf'"):
        reg.build('Leaf')


def test_constructor_failure_names_path_and_class_and_chains_the_cause(reg):
    reg.register_class()(Leaf)
    reg.register_class()(Tree)
    cfg = Config({'SOLVER': {'MODEL': {'NAME': 'Tree', 'LEAF': {'NAME': 'Leaf', 'FAIL': True}}}})
    with pytest.raises(BuildError) as info:
        reg.build(cfg.SOLVER.MODEL)
    assert str(info.value) == (f"'SOLVER.MODEL.LEAF': building TOYS Leaf ({__name__}.Leaf) failed: "
                               'ValueError: leaf exploded')
    assert isinstance(info.value.__cause__, ValueError) and info.value.exit_code == 1


def test_validation_errors_from_nested_builds_keep_the_full_path(reg):
    reg.register_class()(Leaf)
    reg.register_class()(Tree)
    cfg = Config({'SOLVER': {'MODEL': {'NAME': 'Tree', 'LEAF': {'NAME': 'Leaf', 'SIZ': 1}}}})
    with pytest.raises(ConfigError, match=r"^'SOLVER.MODEL.LEAF.SIZ': unknown key for Leaf. Did you mean 'SIZE'\?"):
        reg.build(cfg.SOLVER.MODEL)


def test_nested_default_block_is_filled_and_built(reg):
    reg.register_class()(Leaf)
    reg.register_class()(Tree)
    tree = reg.build({'NAME': 'Tree'})
    assert isinstance(tree.leaf, Leaf) and tree.cfg.LEAF.SIZE == 3


def test_plain_classes_get_defaults_and_validation_from_build(reg):
    @reg.register_class()
    class Plain:
        para_dict = {'K': {'value': 1, 'description': 'k'}}

        def __init__(self, cfg, logger=None):
            self.cfg = cfg

    assert reg.build({'NAME': 'Plain'}).cfg.K == 1
    with pytest.raises(ConfigError, match="'K': expected int"):
        reg.build({'NAME': 'Plain', 'K': 'x'})


def test_recipe_strict_is_honoured_by_builds_at_any_depth(reg, monkeypatch):
    """The entry point publishes the recipe's STRICT; nested builds see it."""
    monkeypatch.delenv('SCEPTER_STRICT', raising=False)
    reg.register_class()(Leaf)
    reg.register_class()(Tree)
    recipe = Config({'STRICT': False, 'SOLVER': {'NAME': 'Tree', 'LEAF': {'NAME': 'Leaf', 'DOC_ONLY': 1}}})
    with pytest.raises(ConfigError, match='unknown key for Leaf'):
        reg.build(recipe.deepcopy().SOLVER)
    with strict_mode(recipe_strict(recipe)):
        tree = reg.build(recipe.SOLVER)
    assert tree.leaf.cfg.DOC_ONLY == 1


def test_find_class_across_registries(reg):
    reg.register_class()(Leaf)
    assert find_class('Leaf') == (reg, Leaf) and find_class('Leaf', 'TOYS') == (reg, Leaf)
    with pytest.raises(RegistryError, match="no registered class 'Lea' in any registry. Did you mean 'Leaf'"):
        find_class('Lea')


def test_importing_the_package_does_not_import_torch_or_builtins():
    code = ('import sys, scepter_core; from scepter_core import MODELS, Config; '
            "print('torch' in sys.modules, 'scepter_core.models' in sys.modules)")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ['False', 'False']


def test_builtins_load_on_first_lookup():
    registry = importlib.import_module('scepter_core.registry')
    registry._load_builtins()
    assert registry._loaded and 'LocalFs' in REGISTRIES['FILE_SYSTEMS']

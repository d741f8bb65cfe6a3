"""Config: loading, inheritance, environment, access, overrides, paths and dumping."""
from __future__ import annotations

import copy
import json
import pickle

import pytest

from scepter_core.config import Config, apply_overrides, is_secret_key, parse_scalar, yaml_load
from scepter_core.errors import ConfigError


def write(path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ---- loading ---------------------------------------------------------------------------

def test_yaml_and_json_load_the_same_tree(tmp_path):
    data = {'SOLVER': {'NAME': 'S', 'LR': 1e-4, 'HOOKS': [{'NAME': 'A'}, {'NAME': 'B'}]}}
    write(tmp_path / 'a.json', json.dumps(data))
    write(tmp_path / 'a.yaml', 'SOLVER:\n  NAME: S\n  LR: 1e-4\n  HOOKS:\n  - NAME: A\n  - NAME: B\n')
    assert Config.load(tmp_path / 'a.json') == Config.load(tmp_path / 'a.yaml') == data


def test_exponent_numbers_read_as_floats():
    got = yaml_load('A: 1e-8\nB: 1E5\nC: -2.5e-3\nD: 1.0\nE: 10\nF: "1e-8"\nG: 1.2.3\n')
    assert got == {'A': 1e-8, 'B': 1e5, 'C': -2.5e-3, 'D': 1.0, 'E': 10, 'F': '1e-8', 'G': '1.2.3'}
    assert isinstance(got['E'], int)


def test_safe_loader_refuses_python_objects(tmp_path):
    write(tmp_path / 'evil.yaml', 'A: !!python/object/apply:os.system ["echo hi"]\n')
    with pytest.raises(ConfigError, match='cannot parse'):
        Config.load(tmp_path / 'evil.yaml')


def test_missing_and_bad_files_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match='not found.*nope.yaml'):
        Config.load(tmp_path / 'nope.yaml')
    write(tmp_path / 'list.yaml', '- 1\n- 2\n')
    with pytest.raises(ConfigError, match='list.yaml.*mapping'):
        Config.load(tmp_path / 'list.yaml')


# ---- inheritance ------------------------------------------------------------------------

def test_base_relative_paths_recursive_merge_child_wins(tmp_path):
    write(tmp_path / 'bases' / 'root.yaml', 'SOLVER:\n  NAME: S\n  MAX_STEPS: 100\n  OPT: {LR: 0.1, EPS: 1e-8}\n')
    write(tmp_path / 'bases' / 'mid.yaml', '_BASE: root.yaml\nSOLVER:\n  OPT: {LR: 0.2}\n  MID: 1\n')
    write(tmp_path / 'child.yaml', '_BASE: bases/mid.yaml\nSOLVER:\n  MAX_STEPS: 5\n')
    cfg = Config.load(tmp_path / 'child.yaml')
    assert cfg.to_dict() == {'SOLVER': {'NAME': 'S', 'MAX_STEPS': 5, 'OPT': {'LR': 0.2, 'EPS': 1e-8}, 'MID': 1}}


def test_base_run_base_model_and_lists_of_bases(tmp_path):
    write(tmp_path / 'run.yaml', 'ENV: {SEED: 1}\nSOLVER: {MAX_STEPS: 10}\n')
    write(tmp_path / 'm1.yaml', 'SOLVER: {MODEL: {NAME: A, X: 1}}\n')
    write(tmp_path / 'm2.yaml', 'SOLVER: {MODEL: {X: 2, Y: 3}}\n')
    write(tmp_path / 'c.yaml', '_BASE_RUN: run.yaml\n_BASE_MODEL: [m1.yaml, m2.yaml]\nSOLVER: {NAME: S}\n')
    cfg = Config.load(tmp_path / 'c.yaml')
    assert cfg.to_dict() == {'ENV': {'SEED': 1},
                             'SOLVER': {'MAX_STEPS': 10, 'MODEL': {'NAME': 'A', 'X': 2, 'Y': 3}, 'NAME': 'S'}}


def test_base_inside_a_block_and_replace(tmp_path):
    write(tmp_path / 'model.yaml', 'NAME: M\nA: 1\nSUB: {K: 1, L: 2}\n')
    write(tmp_path / 'c.yaml', 'SOLVER:\n  MODEL:\n    _BASE: model.yaml\n    A: 2\n    SUB: {_REPLACE: true, K: 9}\n')
    cfg = Config.load(tmp_path / 'c.yaml')
    assert cfg.SOLVER.MODEL.to_dict() == {'NAME': 'M', 'A': 2, 'SUB': {'K': 9}}
    assert '_REPLACE' not in cfg.to_yaml()


def test_replace_marker_in_a_file_without_base_is_dropped(tmp_path):
    write(tmp_path / 'c.yaml', 'A: {_REPLACE: true, B: 1}\n')
    assert Config.load(tmp_path / 'c.yaml').to_dict() == {'A': {'B': 1}}


def test_inheritance_loops_are_detected(tmp_path):
    write(tmp_path / 'a.yaml', '_BASE: b.yaml\nX: 1\n')
    write(tmp_path / 'b.yaml', '_BASE: a.yaml\nY: 1\n')
    with pytest.raises(ConfigError, match='loops:.*a.yaml -> .*b.yaml -> .*a.yaml'):
        Config.load(tmp_path / 'a.yaml')


def test_diamond_inheritance_is_not_a_loop(tmp_path):
    write(tmp_path / 'root.yaml', 'R: 1\n')
    write(tmp_path / 'l.yaml', '_BASE: root.yaml\nL: 1\n')
    write(tmp_path / 'r.yaml', '_BASE: root.yaml\nRR: 1\n')
    write(tmp_path / 'c.yaml', '_BASE: [l.yaml, r.yaml]\n')
    assert Config.load(tmp_path / 'c.yaml').to_dict() == {'R': 1, 'L': 1, 'RR': 1}


# ---- environment ------------------------------------------------------------------------

def test_env_substitution_with_defaults_and_types(tmp_path, monkeypatch):
    monkeypatch.setenv('SC_LR', '1e-4')
    monkeypatch.setenv('SC_DIR', '/data')
    monkeypatch.delenv('SC_UNSET', raising=False)
    write(tmp_path / 'c.yaml', 'LR: ${SC_LR}\nDIR: ${SC_DIR}/imgs\nN: ${SC_UNSET:8}\nS: ${SC_UNSET:abc}\n')
    cfg = Config.load(tmp_path / 'c.yaml')
    assert cfg.to_dict() == {'LR': 1e-4, 'DIR': '/data/imgs', 'N': 8, 'S': 'abc'}


def test_env_in_base_path(tmp_path, monkeypatch):
    write(tmp_path / 'sub' / 'b.yaml', 'B: 1\n')
    monkeypatch.setenv('SC_SUB', 'sub')
    write(tmp_path / 'c.yaml', '_BASE: ${SC_SUB}/b.yaml\n')
    assert Config.load(tmp_path / 'c.yaml').B == 1


def test_unset_env_without_default_names_key_and_variable(tmp_path, monkeypatch):
    monkeypatch.delenv('SC_NOPE', raising=False)
    write(tmp_path / 'c.yaml', 'SOLVER:\n  WORK_DIR: ${SC_NOPE}\n')
    with pytest.raises(ConfigError, match=r"'SOLVER.WORK_DIR'.*'SC_NOPE' is not set"):
        Config.load(tmp_path / 'c.yaml')


# ---- access -------------------------------------------------------------------------------

def test_attribute_item_access_and_dict_api():
    cfg = Config({'SOLVER': {'MODEL': {'NAME': 'M'}, 'LIST': [{'A': 1}]}})
    assert cfg.SOLVER.MODEL.NAME == cfg['SOLVER']['MODEL']['NAME'] == 'M'
    assert cfg.SOLVER.LIST[0].A == 1
    assert cfg.get('NOPE', 3) == 3 and cfg.have('SOLVER') and not cfg.have('NOPE')
    cfg.SOLVER.NEW = {'X': 1}
    assert isinstance(cfg.SOLVER.NEW, Config) and cfg.SOLVER.NEW.path == 'SOLVER.NEW'
    cfg.update({'U': {'V': 1}}, W={'Z': 2})
    assert cfg.U.V == 1 and cfg.W.path == 'W'
    assert cfg.setdefault('D', {'E': 1}).path == 'D'
    assert cfg.pop('D') == {'E': 1} and 'D' not in cfg
    with pytest.raises(AttributeError, match="no key 'MISSING'"):
        cfg.MISSING
    del cfg.U
    assert 'U' not in cfg


def test_deepcopy_and_pickle_keep_values_and_paths():
    cfg = Config({'SOLVER': {'MODEL': {'NAME': 'M', 'L': [1, {'X': 2}]}}})
    for twin in (cfg.deepcopy(), copy.deepcopy(cfg), pickle.loads(pickle.dumps(cfg))):
        assert twin == cfg and isinstance(twin.SOLVER.MODEL, Config)
        assert twin.SOLVER.MODEL.path == 'SOLVER.MODEL' and twin.SOLVER.MODEL.L[1].path == 'SOLVER.MODEL.L.1'
        twin.SOLVER.MODEL.NAME = 'other'
        assert cfg.SOLVER.MODEL.NAME == 'M'
    block = pickle.loads(pickle.dumps(cfg.SOLVER.MODEL))
    assert block.path == 'SOLVER.MODEL' and block.L[1].path == 'SOLVER.MODEL.L.1'


def test_paths_annotate_every_block():
    cfg = Config({'SOLVER': {'TRAIN_HOOKS': [{'NAME': 'A'}, {'NAME': 'B', 'SUB': {'K': 1}}]}})
    assert cfg.path == '' and cfg.SOLVER.path == 'SOLVER'
    assert cfg.SOLVER.TRAIN_HOOKS[1].SUB.path == 'SOLVER.TRAIN_HOOKS.1.SUB'


# ---- overrides ------------------------------------------------------------------------------

def recipe() -> Config:
    return Config({'SOLVER': {'MAX_STEPS': 100, 'OPTIMIZER': {'BETAS': [0.9, 0.999]},
                              'TRAIN_HOOKS': [{'NAME': 'A'}, {'NAME': 'B', 'LOG_INTERVAL': 10}]}})


def test_dotted_overrides_parse_yaml_values():
    cfg = apply_overrides(recipe(), ['SOLVER.MAX_STEPS=10', 'SOLVER.TRAIN_HOOKS.1.LOG_INTERVAL=5',
                                     'SOLVER.OPTIMIZER.BETAS=[0.9,0.99]', 'SOLVER.OPTIMIZER.EPS=1e-6',
                                     'SOLVER.NEW.DEEP=null', 'SOLVER.PROMPT=a photo: of a cat',
                                     'SOLVER.TRAIN_HOOKS.-1.NAME=C'])
    assert cfg.SOLVER.MAX_STEPS == 10 and cfg.SOLVER.TRAIN_HOOKS[1].LOG_INTERVAL == 5
    assert cfg.SOLVER.OPTIMIZER.BETAS == [0.9, 0.99] and cfg.SOLVER.OPTIMIZER.EPS == 1e-6
    assert cfg.SOLVER.NEW.DEEP is None and cfg.SOLVER.NEW.path == 'SOLVER.NEW'
    assert cfg.SOLVER.PROMPT == 'a photo: of a cat'
    assert cfg.SOLVER.TRAIN_HOOKS[1].NAME == 'C'


def test_set_on_list_element_sets_path_of_new_value():
    cfg = recipe()
    cfg.set('SOLVER.TRAIN_HOOKS.1', {'NAME': 'Z', 'SUB': {'K': 1}})
    assert cfg.SOLVER.TRAIN_HOOKS[1].path == 'SOLVER.TRAIN_HOOKS.1'
    assert cfg.SOLVER.TRAIN_HOOKS[1].SUB.path == 'SOLVER.TRAIN_HOOKS.1.SUB'
    apply_overrides(cfg, ['SOLVER.TRAIN_HOOKS.-1={NAME: Y}'])
    assert cfg.SOLVER.TRAIN_HOOKS[1].path == 'SOLVER.TRAIN_HOOKS.1'
    cfg.SOLVER.set('TRAIN_HOOKS.0', {'NAME': 'X'})  # relative to a sub-block
    assert cfg.SOLVER.TRAIN_HOOKS[0].path == 'SOLVER.TRAIN_HOOKS.0'


@pytest.mark.parametrize('override, message', [
    ('SOLVER.TRAIN_HOOKS.7.LOG_INTERVAL=5', r"^'SOLVER.TRAIN_HOOKS.7': index '7' is not valid for a list of 2 items$"),
    ('SOLVER.TRAIN_HOOKS.x=5', r"^'SOLVER.TRAIN_HOOKS.x': index 'x' is not valid"),
    ('SOLVER.MAX_STEPS.X=1', r"^cannot set 'SOLVER.MAX_STEPS.X': 'SOLVER.MAX_STEPS' is int, not a block$"),
    ('SOLVER.MAX_STEPS.X.Y=1', r"^'SOLVER.MAX_STEPS' is int, not a block$"),
    ('SOLVER.OPTIMIZER.BETAS=[0.9,0.99', r"^'SOLVER.OPTIMIZER.BETAS': cannot parse '\[0.9,0.99' as YAML"),
    ('SOLVER.MAX_STEPS', r"^bad override 'SOLVER.MAX_STEPS': expected KEY.PATH=VALUE"),
    ('SOLVER..X=1', r"^bad override 'SOLVER..X=1': empty key segment$"),
])
def test_override_errors_are_one_line_and_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message) as info:
        apply_overrides(recipe(), [override])
    assert '\n' not in str(info.value)


def test_load_applies_overrides(tmp_path):
    write(tmp_path / 'c.yaml', 'SOLVER: {MAX_STEPS: 1}\n')
    assert Config.load(tmp_path / 'c.yaml', ['SOLVER.MAX_STEPS=7']).SOLVER.MAX_STEPS == 7


def test_parse_scalar():
    assert parse_scalar('10') == 10 and parse_scalar('1e-4') == 1e-4 and parse_scalar('true') is True
    assert parse_scalar('[1, 2]') == [1, 2] and parse_scalar('{A: 1}') == {'A': 1}
    assert parse_scalar('') is None and parse_scalar('a: b: c') == 'a: b: c'


# ---- dumping ----------------------------------------------------------------------------------

def test_yaml_round_trip_keeps_types(tmp_path):
    cfg = Config({'A': 1e-8, 'S': '1e-8', 'N': 'null', 'T': (1, 2), 'L': [{'X': None}]})
    cfg.dump(tmp_path / 'out' / 'config.yaml')
    back = Config.load(tmp_path / 'out' / 'config.yaml')
    assert back.to_dict() == {'A': 1e-8, 'S': '1e-8', 'N': 'null', 'T': [1, 2], 'L': [{'X': None}]}


def test_secrets_are_masked_only_in_masked_dumps():
    cfg = Config({'HF_TOKEN': 'abc', 'FS': {'OSS_AK': 'k', 'OSS_SK': 's', 'DB_PASSWORD': 'p'},
                  'TOKENIZER': {'NAME': 'ClipTokenizer'}, 'MAX_TOKENS': 77, 'EMPTY_TOKEN': None})
    masked = yaml_load(cfg.to_yaml(mask_secrets=True))
    assert masked == {'HF_TOKEN': '***', 'FS': {'OSS_AK': '***', 'OSS_SK': '***', 'DB_PASSWORD': '***'},
                      'TOKENIZER': {'NAME': 'ClipTokenizer'}, 'MAX_TOKENS': 77, 'EMPTY_TOKEN': None}
    assert yaml_load(cfg.to_yaml()) == cfg.to_dict()
    assert is_secret_key('api_key') and not is_secret_key('TOKENIZER')

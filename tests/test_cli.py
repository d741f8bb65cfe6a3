"""The `scepter` command through real subprocesses.

Commands that load the built-in registries (torch and friends, seconds each) run once,
batched in one subprocess through the real entry point; the rest run one process each."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

USER_BLOCKS = '''
"""User code registering a toy solver and network, as the quick start does."""
from scepter_core import MODELS, SOLVERS
from scepter_core.base import BaseObject


@MODELS.register_class()
class ToyNet(BaseObject):
    """A toy network for CLI tests."""
    para_dict = {'WIDTH': {'value': 4, 'description': 'Channels.'}}


@SOLVERS.register_class()
class ToySolver(BaseObject):
    """A toy solver for CLI tests."""
    para_dict = {
        'MAX_STEPS': {'value': 10, 'description': 'Steps to train.'},
        'MODEL': {'value': {'NAME': 'ToyNet'}, 'registry': 'MODELS', 'description': 'The network.'},
        'HF_TOKEN': {'value': None, 'type': str, 'description': 'Hub token (masked in output).'},
    }
'''

GOOD = '''
IMPORTS: [user_blocks.py]
ENV: {SEED: 1}
SOLVER:
  NAME: ToySolver
  MAX_STEPS: 5
  HF_TOKEN: secret-value
  MODEL: {NAME: ToyNet, WIDTH: 8}
'''

BAD = '''
IMPORTS: [user_blocks.py]
SOLVER:
  NAME: ToySolver
  MAX_STEP: 5
  MODEL: {NAME: ToyNet, WIDTH: wide}
'''

# Runs several argv lists through scepter_cli.main.main in one process; prints JSON results.
DRIVER = '''
import contextlib, io, json, sys
from scepter_cli.main import main
results = []
for argv in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    results.append({'code': code, 'out': out.getvalue(), 'err': err.getvalue()})
print(json.dumps(results))
'''


def run(args: list[str], cwd: Path | None = None, exe: list[str] | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, COLUMNS='200', NO_COLOR='1', TERM='dumb')
    return subprocess.run((exe or [sys.executable, '-m', 'scepter_cli']) + args, capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=120)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines()
            if line.strip() and '--debug' not in line and not line.startswith('WARNING: ')]


@pytest.fixture(scope='module')
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp('cli')
    (root / 'user_blocks.py').write_text(USER_BLOCKS)
    (root / 'good.yaml').write_text(GOOD)
    (root / 'bad.yaml').write_text(BAD)
    (root / 'broken.py').write_text("raise RuntimeError('user code is broken')\n")
    (root / 'toy_pkg').mkdir()
    (root / 'toy_pkg' / '__init__.py').write_text('')
    (root / 'toy_pkg' / 'extra.py').write_text(textwrap.dedent('''
        from scepter_core import MODELS
        from scepter_core.base import BaseObject

        @MODELS.register_class()
        class ToyExtra(BaseObject):
            """Registered by a module named with --import."""
    '''))
    (root / 'modular.yaml').write_text('SOLVER:\n  NAME: ToySolver\n  MODEL: {NAME: ToyExtra}\n')
    return root


BATCH = {
    'list': ['registry', 'list'],
    'list_json': ['registry', 'list', '--json'],
    'list_fs_json': ['registry', 'list', 'file_systems', '--json'],
    'list_typo': ['registry', 'list', 'FILE_SYSTEM'],
    'template': ['config', 'template', 'LocalFs'],
    'template_typo': ['config', 'template', 'LocalFS'],
    'template_user': ['config', 'template', 'ToySolver', '--import', '{root}/user_blocks.py'],
    'template_wrong_registry': ['config', 'template', 'ToySolver', '--registry', 'MODELS'],
    'show': ['config', 'show', '--trust-imports', '--cfg', '{root}/good.yaml', '--set', 'SOLVER.MAX_STEPS=7',
             '--set', 'SOLVER.MODEL.WIDTH=16', '--set', 'SOLVER.EXTRA=[1,2]'],
    'show_bad_override': ['config', 'show', '--trust-imports', '--cfg', '{root}/good.yaml',
                          '--set', 'SOLVER.MAX_STEPS.X=1'],
    'show_bad_yaml': ['config', 'show', '--trust-imports', '--cfg', '{root}/good.yaml',
                      '--set', 'SOLVER.BETAS=[0.9,0.99'],
    'validate_good': ['config', 'validate', '--trust-imports', '--cfg', '{root}/good.yaml'],
    'validate_bad': ['config', 'validate', '--trust-imports', '--cfg', '{root}/bad.yaml',
                     '--set', 'SOLVER.MODEL.NAME=ToyNte'],
    'validate_not_strict': ['config', 'validate', '--trust-imports', '--cfg', '{root}/bad.yaml',
                            '--set', 'STRICT=false'],
    'validate_bad_type': ['config', 'validate', '--trust-imports', '--cfg', '{root}/good.yaml',
                          '--set', 'SOLVER.MAX_STEPS=many'],
}


@pytest.fixture(scope='module')
def batch(project) -> dict[str, dict]:
    argvs = [[a.format(root=project) for a in argv] for argv in BATCH.values()]
    proc = subprocess.run([sys.executable, '-c', DRIVER, json.dumps(argvs)], capture_output=True, text=True,
                          cwd=project, timeout=300, env=dict(os.environ, COLUMNS='200', NO_COLOR='1'))
    assert proc.returncode == 0, proc.stderr
    return dict(zip(BATCH, json.loads(proc.stdout.splitlines()[-1])))


# ---- help and version --------------------------------------------------------------------

def test_help_and_version_with_python_m():
    helped, version = run(['--help']), run(['--version'])
    assert helped.returncode == 0 and 'registry' in helped.stdout and 'config' in helped.stdout
    assert 'Example' in helped.stdout
    from scepter_core import __version__
    assert version.returncode == 0 and version.stdout.strip() == f'scepter {__version__}'


def test_console_script_installed_by_pip():
    exe = shutil.which('scepter')
    if exe is None:
        pytest.skip('the `scepter` console script is not installed (pip install -e .)')
    assert run(['--help'], exe=[exe]).returncode == 0
    assert run(['--version'], exe=[exe]).stdout.startswith('scepter ')


HEAVY = ('diffusers', 'transformers', 'lightning', 'pytorch_lightning', 'peft', 'open_clip')


@pytest.mark.timeout(240)
@pytest.mark.parametrize('argv, absent', [
    (['--help'], ('torch',) + HEAVY),
    (['train', '--help'], ('torch',) + HEAVY),
    # validating needs the classes' declared parameters (torch modules), never the model libraries
    (['config', 'validate', '--cfg', 'examples/flux1_schnell_lora.yaml', '--set', 'ENV.USE_PL=true'], HEAVY),
    (['config', 'validate', '--cfg', 'examples/sdxl_1024_lora.yaml'], HEAVY)], ids=lambda v: '_'.join(v)[:40])
def test_cli_start_does_not_import_what_it_does_not_need(argv: list[str], absent: tuple[str, ...]):
    code = ("import atexit, json, sys; atexit.register(lambda: print(json.dumps(sorted({m.split('.')[0] "
            "for m in sys.modules})))); from scepter_cli.main import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, '-c', code, *argv], capture_output=True, text=True, timeout=200,
                          cwd=Path(__file__).resolve().parents[1], env={**os.environ, 'HF_HUB_OFFLINE': '1'})
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = set(json.loads(proc.stdout.splitlines()[-1]))
    assert not loaded & set(absent), sorted(loaded & set(absent))


def _command_paths() -> list[list[str]]:
    import typer
    from scepter_cli.main import app

    def walk(cmd, path: list[str]) -> list[list[str]]:
        out = [path]
        for name, sub in sorted(getattr(cmd, 'commands', {}).items()):  # a group has sub-commands
            out += walk(sub, path + [name])
        return out

    return walk(typer.main.get_command(app), [])


def test_every_command_and_group_has_help_with_an_example():
    paths = _command_paths()
    assert ['registry', 'list'] in paths and ['config', 'validate'] in paths
    proc = subprocess.run([sys.executable, '-c', DRIVER, json.dumps([p + ['--help'] for p in paths])],
                          capture_output=True, text=True, timeout=120, env=dict(os.environ, COLUMNS='200'))
    assert proc.returncode == 0, proc.stderr
    for path, result in zip(paths, json.loads(proc.stdout.splitlines()[-1])):
        assert result['code'] == 0, (path, result)
        assert 'Usage' in result['out'] and 'Example' in result['out'], f"`scepter {' '.join(path)} --help`"


# ---- registry list -----------------------------------------------------------------------------

def test_registry_list_table_and_json(batch):
    from scepter_core.registry import REGISTRIES
    table = batch['list']
    assert table['code'] == 0 and all(name in table['out'] for name in REGISTRIES)
    assert 'LocalFs' in table['out'] and 'Scepter FILE_SYSTEM blocks' in table['out']
    everything = json.loads(batch['list_json']['out'])
    assert set(everything) == set(REGISTRIES)
    fs = json.loads(batch['list_fs_json']['out'])
    assert list(fs) == ['FILE_SYSTEMS'] and fs['FILE_SYSTEMS'] == everything['FILE_SYSTEMS']
    assert 'LocalFs' in fs['FILE_SYSTEMS'] and fs['FILE_SYSTEMS']['LocalFs'].startswith('Scepter')
    typo = batch['list_typo']
    assert typo['code'] == 2 and "no registry 'FILE_SYSTEM'. Did you mean 'FILE_SYSTEMS'?" in typo['err']


# ---- config template ------------------------------------------------------------------------------

def yaml_output(result: dict) -> dict:
    """The parsed stdout of a command that must have succeeded."""
    assert result['code'] == 0, result['err']
    return yaml.safe_load(result['out'])


def test_config_template_is_yaml_that_names_the_class(batch):
    assert yaml_output(batch['template']) == {
        'FILE_SYSTEMS': {'NAME': 'LocalFs', 'TEMP_DIR': None, 'AUTO_CLEAN': False, 'RETRY_TIMES': 10}}
    assert '# Directory for cached downloads. (str)' in batch['template']['out']
    typo = batch['template_typo']
    assert typo['code'] == 2 and "no registered class 'LocalFS' in any registry. Did you mean 'LocalFs'" in typo['err']


def test_config_template_of_user_class_nests_blocks(batch):
    assert yaml_output(batch['template_user']) == {
        'SOLVERS': {'NAME': 'ToySolver', 'MAX_STEPS': 10, 'MODEL': {'NAME': 'ToyNet', 'WIDTH': 4}, 'HF_TOKEN': None}}
    assert '  MODEL:\n    NAME: ToyNet\n    # Channels. (int)\n    WIDTH: 4' in batch['template_user']['out']
    wrong = batch['template_wrong_registry']
    assert wrong['code'] == 2 and "no registered class 'ToySolver' in MODELS" in wrong['err']


# ---- config show / validate ----------------------------------------------------------------------

def test_config_show_prints_resolved_yaml_with_overrides_and_masked_secrets(batch):
    assert yaml_output(batch['show'])['SOLVER'] == {'NAME': 'ToySolver', 'MAX_STEPS': 7, 'HF_TOKEN': '***',
                              'MODEL': {'NAME': 'ToyNet', 'WIDTH': 16}, 'EXTRA': [1, 2]}
    bad = batch['show_bad_override']
    assert bad['code'] == 2 and error_lines(bad['err']) == [
        "error: cannot set 'SOLVER.MAX_STEPS.X': 'SOLVER.MAX_STEPS' is int, not a block"]
    unparsable = batch['show_bad_yaml']  # brackets in messages are printed, not read as markup
    assert unparsable['code'] == 2 and error_lines(unparsable['err']) == [
        "error: 'SOLVER.BETAS': cannot parse '[0.9,0.99' as YAML: expected ',' or ']', but got '<stream end>'"]


def test_config_validate_reports_one_line_per_problem(batch):
    assert batch['validate_good']['code'] == 0 and 'is valid' in batch['validate_good']['out']
    bad = batch['validate_bad']
    assert bad['code'] == 2
    lines = error_lines(bad['err'])
    assert len(lines) == 2 and 'Traceback' not in bad['err']
    assert lines[0].startswith("'SOLVER.MAX_STEP': unknown key for ToySolver. Did you mean 'MAX_STEPS'?")
    assert lines[1].startswith("'SOLVER.MODEL.NAME': MODELS has no entry 'ToyNte'. Did you mean 'ToyNet'?")
    lenient = batch['validate_not_strict']
    assert lenient['code'] == 2 and error_lines(lenient['err']) == [
        "'SOLVER.MODEL.WIDTH': expected int, got str 'wide'"]
    assert "WARNING: 'SOLVER.MAX_STEP': unknown key for ToySolver" in lenient['err']
    typed = batch['validate_bad_type']
    assert typed['code'] == 2 and error_lines(typed['err']) == ["'SOLVER.MAX_STEPS': expected int, got str 'many'"]


def test_validate_as_its_own_process(project):
    good, bad = run(['config', 'validate', '--trust-imports', '--cfg', 'good.yaml'], cwd=project), run(
        ['config', 'validate', '--trust-imports', '--cfg', str(project / 'bad.yaml')])
    assert good.returncode == 0, good.stderr
    assert bad.returncode == 2 and len(error_lines(bad.stderr)) == 2 and 'Traceback' not in bad.stderr


def test_import_option_loads_a_module_with_the_console_script(project):
    exe = shutil.which('scepter')
    exe = [exe] if exe else [sys.executable, '-m', 'scepter_cli']
    ok = run(['config', 'validate', '--cfg', 'modular.yaml', '--import', 'toy_pkg.extra',
              '--import', 'user_blocks.py'], cwd=project, exe=exe)
    assert ok.returncode == 0, ok.stderr


# ---- errors ----------------------------------------------------------------------------------------

def test_config_error_exits_2_without_traceback(project):
    result = run(['config', 'show', '--cfg', 'missing.yaml'], cwd=project)
    assert result.returncode == 2 and 'Traceback' not in result.stderr
    assert error_lines(result.stderr) == [f"error: config file not found: '{project / 'missing.yaml'}'"]


def test_runtime_error_exits_1_and_debug_shows_traceback(project):
    plain = run(['config', 'template', 'X', '--import', 'broken.py'], cwd=project)
    assert plain.returncode == 1 and 'Traceback' not in plain.stderr
    assert error_lines(plain.stderr) == [
        f"error: --import: running '{project / 'broken.py'}' failed: RuntimeError: user code is broken"]
    assert '--debug' in plain.stderr
    debug = run(['config', 'template', 'X', '--import', 'broken.py', '--debug'], cwd=project)
    assert debug.returncode == 1 and 'Traceback' in debug.stderr and 'RuntimeError: user code is broken' in debug.stderr

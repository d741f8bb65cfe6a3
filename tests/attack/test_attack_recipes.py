"""Attack corpus, recipes: malformed YAML and values get one line naming file or key; a recipe's
IMPORTS run only for train/test (or with --trust-imports), never for show or validate."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from fixtures import SCEPTER_RECIPES
from harness import ROOT, canary, cli, cli_many, judge

TUNED = SCEPTER_RECIPES / 'stable_diffusion_1.5_512_lora.yaml'
BILLION_LAUGHS = ''.join(['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'] +
                         [f'{x}: &{x} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n'
                          for p, x in zip('abcdefgh', 'bcdefghi')])
TINY_SOLVER = 'SOLVER:\n  NAME: LatentDiffusionSolver\n  MAX_STEPS: 2\n'


def problems(name: str, proc, names: list[str]) -> list[str]:
    """validate's own report: exit 2, no `error:` line but one line per problem, the first naming `names`."""
    judge(name, proc, error=False)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith(('WARNING', 'note:'))]
    assert proc.returncode == 2 and lines, f'{name}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}'
    for want in names:
        assert want in lines[0], f'{name}: {want!r} not named in {lines[0]!r}'
    return lines


def test_malformed_yaml_names_the_file_and_line(tmp_path: Path):
    bad = tmp_path / 'broken.yaml'
    bad.write_text('SOLVER:\n  NAME: [unclosed\n')
    judge('malformed yaml', cli('config', 'validate', '--cfg', str(bad)), names=['broken.yaml', 'line'])


# Each: (case, recipe text, what the one error line names). Run in one process: none imports code.
BAD_FILES = {
    'yaml alias bomb': (BILLION_LAUGHS, ['.yaml', 'alias']),
    'recursive alias': ('a: &a [1, *a]\n', ['recursive']),
    'python tag apply': ('SOLVER: !!python/object/apply:os.system ["touch {canary}"]\n',
                         ['!!python/object/apply', 'refused']),
    'python tag name': ('SOLVER: {NAME: !!python/name:os.system }\n', ['!!python/name']),
    'top level list': ('- SOLVER\n- ENV\n', ['mapping']),
    'tab indentation': ('SOLVER:\n\tNAME: x\n', ['line 2']),
    'deep nesting': ('a: ' + '[' * 5000 + ']' * 5000 + '\n', ['.yaml']),
    'unset env var': ('SOLVER:\n  NAME: LatentDiffusionSolver\n  WORK_DIR: ${A1_SURELY_UNSET}/run\n',
                      ['A1_SURELY_UNSET', 'SOLVER.WORK_DIR']),
    'base missing file': ('_BASE: nowhere.yaml\n' + TINY_SOLVER, ['nowhere.yaml', '_BASE']),
    'base is a directory': ('_BASE: sub\n' + TINY_SOLVER, ['sub', 'directory']),
    'base loop': ('_BASE: loop_b.yaml\n' + TINY_SOLVER, ['loops', 'loop_b.yaml']),
    'base env unset': ('_BASE: ${A1_SURELY_UNSET}.yaml\n', ['A1_SURELY_UNSET']),
    'json malformed': ('{"SOLVER": {"NAME": }', ['.json', 'line 1']),
    'non-utf8 recipe': ('SOLVER:\n  NAME: LatentDiffusionSolver\n  # caf\xe9\n', ['.yaml', 'UTF-8', 'line 3']),
}


def test_bad_recipe_files_each_fail_in_one_line(tmp_path: Path):
    (tmp_path / 'sub').mkdir()
    (tmp_path / 'loop_b.yaml').write_text('_BASE: bad_base_loop.yaml\n')
    mark = tmp_path / 'tag.ran'
    paths = {}
    for case, (text, _) in BAD_FILES.items():
        name = 'bad_' + case.replace(' ', '_') + ('.json' if case.startswith('json') else '.yaml')
        paths[case] = tmp_path / name
        paths[case].write_bytes(text.replace('{canary}', str(mark)).encode('latin-1'))
    assert len(paths['yaml alias bomb'].read_bytes()) < 700  # 9^9 values once expanded
    start = time.monotonic()
    results = cli_many([['config', 'show', '--cfg', str(p)] for p in paths.values()], timeout=120)
    assert time.monotonic() - start < 90  # the bomb fails fast: nothing is expanded
    for (case, (_, names)), proc in zip(BAD_FILES.items(), results):
        judge(case, proc, names=[paths[case].name if n == '.yaml' else n for n in names], markers=[mark])


def test_bad_overrides_name_the_override(tmp_path: Path):
    recipe = tmp_path / 'r.yaml'
    recipe.write_text(TINY_SOLVER)
    cases = {'override without =': (['--set', 'SOLVER.MAX_STEPS'], ['SOLVER.MAX_STEPS']),
             'override empty segment': (['--set', 'SOLVER..X=1'], ['SOLVER..X']),
             'override into a scalar': (['--set', 'SOLVER.MAX_STEPS.X=1'], ['SOLVER.MAX_STEPS']),
             'override bad list index': (['--set', 'SOLVER.TRAIN_HOOKS.7.NAME=x'], ['SOLVER.TRAIN_HOOKS.7', 'index'])}
    results = cli_many([['config', 'show', '--cfg', str(recipe), *a] for a, _ in cases.values()])
    for (case, (_, names)), proc in zip(cases.items(), results):
        judge(case, proc, names=names)


# Wrong types and impossible values: validate reports them, train never starts.
BAD_VALUES = {
    'max steps a word': ('SOLVER.MAX_STEPS=many', ['SOLVER.MAX_STEPS', 'many']),
    'max steps negative': ('SOLVER.MAX_STEPS=-5', ['SOLVER.MAX_STEPS', '-5']),
    'batch size zero': ('SOLVER.TRAIN_DATA.BATCH_SIZE=0', ['SOLVER.TRAIN_DATA.BATCH_SIZE', '0']),
    'learning rate negative': ('SOLVER.OPTIMIZER.LEARNING_RATE=-1', ['LEARNING_RATE', '-1']),
    'learning rate a list': ('SOLVER.OPTIMIZER.LEARNING_RATE=[1,2]', ['LEARNING_RATE']),
    'image size huge': ('SOLVER.TRAIN_DATA.IMAGE_SIZE=10000000', ['SOLVER.TRAIN_DATA.IMAGE_SIZE', '10000000']),
    'sample steps zero': ('SOLVER.SAMPLE_ARGS.SAMPLE_STEPS=0', ['SOLVER.SAMPLE_ARGS.SAMPLE_STEPS']),
    'guide scale nan': ('SOLVER.SAMPLE_ARGS.GUIDE_SCALE=.nan', ['SOLVER.SAMPLE_ARGS.GUIDE_SCALE', 'nan']),
    'unknown sampler in recipe': ('SOLVER.SAMPLE_ARGS.SAMPLER=eulerr',
                                  ['SOLVER.SAMPLE_ARGS.SAMPLER', 'eulerr', 'euler']),
    'unknown sample key': ('SOLVER.SAMPLE_ARGS.STEPZ=3', ['STEPZ']),
    'unknown tuner': ('SOLVER.TUNER=[{NAME: SwiftSCETuning}]', ['SOLVER.TUNER.0.NAME', 'SwiftSCETuning']),
    'tuner key typo': ('SOLVER.TUNER=[{NAME: SwiftLoRA, RANK: 4}]', ['SOLVER.TUNER.0.RANK']),
}


def test_impossible_values_fail_validate_naming_key_and_value():
    recipe = str(ROOT / 'examples' / 'tiny_shapes.yaml')
    results = cli_many([['config', 'validate', '--cfg', recipe, '--set', s] for s, _ in BAD_VALUES.values()])
    for (case, (_, names)), proc in zip(BAD_VALUES.items(), results):
        problems(case, proc, names)


def test_what_train_rejects_validate_rejects_and_train_starts_nothing(tmp_path: Path):
    """Scepter's SCE recipe (a tuner we do not have); user code calling sys.exit(0) on import."""
    sce = tmp_path / 'sd15_sce.yaml'
    sce.write_text(Path(TUNED).read_text().replace('SwiftLoRA', 'SwiftSCETuning'))
    (tmp_path / 'quits.py').write_text('import sys\nsys.exit(0)\n')
    quits = tmp_path / 'quits.yaml'
    quits.write_text('IMPORTS: [quits.py]\n' + TINY_SOLVER + f'  WORK_DIR: {tmp_path / "w"}\n')
    validate, train, exits = cli_many([['config', 'validate', '--cfg', str(sce)],
                                       ['train', '--cfg', str(sce), '--work-dir', str(tmp_path / 'w')],
                                       ['train', '--cfg', str(quits)]])
    problems('validate SwiftSCETuning', validate, ['SOLVER.TUNER.0.NAME', 'SwiftSCETuning'])
    judge('train SwiftSCETuning', train, names=['SOLVER.TUNER.0.NAME', 'SwiftSCETuning'])
    judge('IMPORTS sys.exit(0)', exits, names=['quits.py', 'sys.exit(0)'])
    assert not (tmp_path / 'w' / 'checkpoints').exists()


def test_stage_two_without_stage_one_names_the_recipe_to_train_first(tmp_path: Path):
    proc = cli('train', '--cfg', 'examples/tiny_shapes.yaml', '--set', 'SOLVER.MAX_STEPS=1',
               env={'TINY_WORK_DIR': str(tmp_path)})
    judge('stage 2 before stage 1', proc, names=['FIRST_STAGE_MODEL.PRETRAINED_MODEL', 'tiny_shapes_vae.yaml',
                                                 'scepter train --cfg'])
    assert not (tmp_path / 'tiny_shapes').exists()


# ---- IMPORTS: code named by a recipe runs only when the user asks -------------------------------

@pytest.fixture
def booby_trapped(tmp_path: Path) -> tuple[Path, Path]:
    """A recipe whose IMPORTS name payload.py, which leaves a canary when it runs."""
    code, mark = canary(tmp_path)
    (tmp_path / 'payload.py').write_text(code)
    recipe = tmp_path / 'shared.yaml'
    recipe.write_text((ROOT / 'examples' / 'tiny_shapes_vae.yaml').read_text() + '\nIMPORTS: [payload.py]\n')
    return recipe, mark


def test_show_and_validate_never_run_a_recipes_imports(booby_trapped):
    recipe, mark = booby_trapped
    show, valid, bad = cli_many([['config', 'show', '--cfg', str(recipe)],
                                 ['config', 'validate', '--cfg', str(recipe)],
                                 ['config', 'validate', '--cfg', str(recipe), '--set', 'SOLVER.MODEL.NAME=UserNet']])
    judge('config show imports', show, markers=[mark], error=False)
    judge('config validate imports', valid, markers=[mark], error=False)
    assert show.returncode == 0 and 'payload.py' in show.stdout and valid.returncode == 0
    lines = problems('validate names a class of untrusted IMPORTS', bad, ['SOLVER.MODEL.NAME', 'UserNet'])
    assert 'note:' in bad.stderr and '--trust-imports' in bad.stderr and 'payload.py' in bad.stderr, lines
    assert not mark.exists()
    trusted = cli('config', 'validate', '--trust-imports', '--cfg', str(recipe))
    assert trusted.returncode == 0 and mark.exists(), trusted.stderr  # the user asked: the code ran

"""Attack corpus, CLI values: `scepter infer` / `train` / `convert` options that no model can use fail
in one line naming the option and the value, before anything is allocated; a checkpoint folder's
config.yaml never runs its IMPORTS."""
from __future__ import annotations

import importlib.util
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import ROOT, canary, cli, cli_many, judge


def _e2e():
    """The e2e tests' 16 px recipe (tests/e2e/conftest.py), shared rather than copied."""
    spec = importlib.util.spec_from_file_location('e2e_tiny_recipes', ROOT / 'tests' / 'e2e' / 'conftest.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory) -> Path:
    """A tiny model trained for 2 steps: WORK_DIR with config.yaml and checkpoints/latest."""
    root = tmp_path_factory.mktemp('attack_cli')
    e2e = _e2e()
    recipe = e2e.write_recipe(root / 'recipe.yaml', e2e.tiny_recipe(root / 'work', steps=2))
    proc = cli('train', '--cfg', str(recipe), env={'SCEPTER_PROGRESS': '0'})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / 'work'


def _trapped_copy(run_dir: Path, name: str) -> tuple[Path, Path]:
    """A copy of the run whose saved config.yaml names a payload.py in IMPORTS (a shared folder)."""
    folder = run_dir.parent / name
    if not folder.exists():
        shutil.copytree(run_dir, folder)
    code, mark = canary(folder)
    for cfg in folder.rglob('config.yaml'):  # the work dir's and each step's
        (cfg.parent / 'payload.py').write_text(code)
        cfg.write_text(cfg.read_text() + '\nIMPORTS: [payload.py]\n')
    return folder, mark


def _weights(run_dir: Path) -> Path:
    return next((run_dir / 'checkpoints').glob('step-*/model.safetensors'))


# (case, infer options, what the one error line names)
BAD_INFER = {
    'num samples 0': (['--num-samples', '0'], ['--num-samples']),
    'batch size 0': (['--batch-size', '0'], ['--batch-size']),
    'size 7 7': (['--size', '7', '7'], ['--size', '7 x 7', 'multiple of 4']),
    'size 100000 100000': (['--size', '100000', '100000'], ['--size', '100000 x 100000', 'GiB']),
    'size 0 16': (['--size', '0', '16'], ['--size', '0 x 16']),
    'size 2**24': (['--size', str(2 ** 24), '16'], ['--size', str(2 ** 24)]),
    'steps 0': (['--steps', '0'], ['--steps', 'got 0']),
    'steps -3': (['--steps', '-3'], ['--steps', '-3']),
    'steps 10**7': (['--steps', str(10 ** 7)], ['--steps', str(10 ** 7)]),
    'unknown sampler': (['--sampler', 'eulr'], ['--sampler', "'eulr'", 'euler', 'ddim', 'dpmpp_2m']),
    'guide scale nan': (['--guide-scale', 'nan'], ['--guide-scale', 'nan']),
    'guide scale inf': (['--guide-scale', 'inf'], ['--guide-scale', 'inf']),
    'guide rescale 5': (['--guide-rescale', '5'], ['--guide-rescale', '5']),
    'unknown discretization': (['--discretization', 'cubic'], ['--discretization', 'cubic']),
    'guide rescale 7 by --set': (['--set', 'SOLVER.SAMPLE_ARGS.GUIDE_RESCALE=7'], ['GUIDE_RESCALE', 'got 7']),
    'lora missing file': (['--lora', '{tmp}/missing_lora.safetensors'], ['missing_lora.safetensors']),
    'lora bad scale': (['--lora', '{weights}:strong'], ['strong']),
    'lora on a non-LoRA file': (['--lora', '{weights}'], ['{weights}', 'LoRA']),
    'pretrained model missing': (['--pretrained-model', '{tmp}/nowhere'], ['nowhere']),
}


def test_impossible_infer_values_fail_in_one_line_before_sampling(run_dir: Path, tmp_path: Path):
    base = ['infer', '--pretrained-model', str(run_dir), '-p', 'a red circle', '--steps', '1']
    argvs = []
    for opts, _ in BAD_INFER.values():
        opts = [o.format(tmp=tmp_path, weights=_weights(run_dir)) for o in opts]
        argvs.append(base + ['--out', str(tmp_path / 'out')] + opts)
    start = time.monotonic()
    results = cli_many(argvs, env={'SCEPTER_PROGRESS': '0'})
    for (case, (_, names)), proc in zip(BAD_INFER.items(), results):
        judge(case, proc, names=[n.format(weights=_weights(run_dir)) for n in names])
    assert not list((tmp_path / 'out').glob('*.png'))  # nothing sampled, nothing half-written
    assert time.monotonic() - start < 240


def test_a_checkpoint_folders_imports_never_run_when_loading_weights(run_dir: Path, tmp_path: Path):
    folder, mark = _trapped_copy(run_dir, 'shared_untrusted')
    trusted, trusted_mark = _trapped_copy(run_dir, 'shared_trusted')
    out = tmp_path / 'out'
    infer, step, convert, ok = cli_many([
        ['infer', '--pretrained-model', str(folder), '-p', 'x', '--steps', '1', '--out', str(out / 'a')],
        ['infer', '--pretrained-model', str(folder / 'checkpoints' / 'latest'), '-p', 'x', '--steps', '1',
         '--out', str(out / 'b')],
        ['convert', str(_weights(folder)), str(out / 'c.safetensors'), '--to', 'scepter',
         '--cfg', str(folder / 'config.yaml')],
        ['infer', '--pretrained-model', str(trusted), '-p', 'x', '--steps', '1', '--out', str(out / 'd'),
         '--trust-imports']], env={'SCEPTER_PROGRESS': '0'})
    for case, proc in (('infer from a shared work dir', infer), ('infer from a shared latest', step),
                       ('convert with a shared recipe', convert)):
        judge(case, proc, markers=[mark], error=False)
        assert proc.returncode == 0, f'{case}\n{proc.stderr[-2000:]}'
    assert (out / 'a' / '00000.png').is_file() and (out / 'c.safetensors').is_file()
    assert ok.returncode == 0 and trusted_mark.exists(), ok.stderr[-2000:]  # asked for: it ran


def test_import_option_faults_fail_train_in_one_line(run_dir: Path, tmp_path: Path):
    (tmp_path / 'raises.py').write_text("raise RuntimeError('broken on purpose')\n")
    (tmp_path / 'quits.py').write_text('import sys\nsys.exit(0)\n')
    e2e = _e2e()
    recipe = e2e.write_recipe(tmp_path / 'r.yaml', e2e.tiny_recipe(tmp_path / 'work', steps=2))
    cases = {'--import missing file': (str(tmp_path / 'nothing.py'), ['--import', 'nothing.py']),
             '--import raising file': (str(tmp_path / 'raises.py'), ['raises.py', 'broken on purpose']),
             '--import sys.exit(0)': (str(tmp_path / 'quits.py'), ['quits.py', 'sys.exit(0)']),
             '--import missing module': ('no_such_module_a1', ['no_such_module_a1'])}
    results = cli_many([['train', '--cfg', str(recipe), '--import', path] for path, _ in cases.values()])
    for (case, (_, names)), proc in zip(cases.items(), results):
        judge(case, proc, names=names)
    assert not (tmp_path / 'work' / 'checkpoints').exists()  # nothing trained


def test_a_hundred_thousand_samples_are_written_batch_by_batch(run_dir: Path, tmp_path: Path):
    """100000 images would be 100000 x 3 x 16 x 16 floats in one batch (and one grid); in batches
    of 2 the first files appear at once and memory stays flat. Stopped after a few batches."""
    out = tmp_path / 'many'
    proc = subprocess.Popen([sys.executable, '-m', 'scepter_cli', 'infer', '--pretrained-model', str(run_dir),
                             '-p', 'x', '--steps', '1', '--num-samples', '100000', '--batch-size', '2',
                             '--out', str(out)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**__import__('os').environ, 'PYTHONPATH': str(ROOT),
                                            'SCEPTER_PROGRESS': '0', 'HF_HUB_OFFLINE': '1'})
    deadline = time.monotonic() + 180
    while not (out / '00005.png').exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    rss_kb = _rss_kb(proc.pid)
    proc.send_signal(signal.SIGKILL)
    stdout, stderr = proc.communicate()
    judge('num samples 100000', subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr),
          error=False)
    assert (out / '00005.png').is_file(), stderr[-2000:]
    assert rss_kb is None or rss_kb < 3 * 2 ** 20, f'{rss_kb} kB resident after 3 batches'


def _rss_kb(pid: int) -> int | None:
    try:
        status = Path(f'/proc/{pid}/status').read_text()
    except OSError:
        return None
    line = next((ln for ln in status.splitlines() if ln.startswith('VmRSS:')), None)
    return int(line.split()[1]) if line else None

"""Attack corpus, checkpoints: broken safetensors, malicious pickles, wrong shapes and dtypes,
incomplete diffusers folders and `latest` pointers that lie. Each is refused in one line naming
the file (or falls back, saying so), runs no code, and leaves the trained checkpoint loadable."""
from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import struct
import sys
from pathlib import Path

import pytest
import torch

from harness import canary, cli, judge

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from e2e.conftest import tiny_recipe, write_recipe  # noqa: E402  (the tiny model)

from scepter_core.checkpoint import load_state_dict, read_safetensors_header  # noqa: E402


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """A 2-step tiny run (KEEP_LAST 0, the default) whose checkpoints folder held the temp folder
    of a killed save before it started; its weights' digest, to tell that nothing was lost."""
    root = tmp_path_factory.mktemp('ckpt')
    work = root / 'work'
    killed = work / 'checkpoints' / '.step-000001.tmp-killed'
    killed.mkdir(parents=True)
    (killed / 'model.safetensors').write_bytes(b'half')
    recipe = write_recipe(root / 'recipe.yaml', tiny_recipe(work, 2))
    proc = cli('train', '--cfg', str(recipe), env={'SCEPTER_PROGRESS': '0'})
    weights = work / 'checkpoints' / 'step-000002' / 'model.safetensors'
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {'root': root, 'work': work, 'weights': weights, 'proc': proc, 'killed': killed,
            'digest': hashlib.sha256(weights.read_bytes()).hexdigest()}


def _intact(trained: dict):
    def check() -> bool:
        w = trained['weights']
        return w.is_file() and hashlib.sha256(w.read_bytes()).hexdigest() == trained['digest'] \
            and len(load_state_dict(trained['work'])) > 0
    return check


def _split(path: Path) -> tuple[dict, bytes]:
    header, start = read_safetensors_header(path)
    return header, path.read_bytes()[start:]


def _write_raw(path: Path, header: object | bytes, data: bytes, length: int | None = None) -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack('<Q', len(raw) if length is None else length) + raw + data)
    return path


def test_temp_folder_of_a_killed_save_is_cleaned_with_keep_last_0(trained):
    judge('ckpt: temp folder of a killed save', trained['proc'], intact=_intact(trained), error=False)
    assert not trained['killed'].exists()
    assert not list((trained['work'] / 'checkpoints').glob('.step-*'))


def _first_tensor(header: dict) -> str:
    return next(k for k in header if k != '__metadata__')


def _with(header: dict, key: str, **change) -> dict:
    return {**header, key: {**header[key], **change}}


def _bad_file(case: str, src: Path, out: Path) -> tuple[Path, list[str]]:
    """The attacked copy of `src` for `case`, and what its error must name besides the file."""
    header, data = _split(src)
    first = _first_tensor(header)
    if case == 'truncated':
        (out / 'cut.safetensors').write_bytes(src.read_bytes()[:src.stat().st_size // 2])
        return out / 'cut.safetensors', ['truncated']
    if case == 'huge header':  # 150 MB claimed, a sparse file: nothing that large is written
        with open(out / 'huge.safetensors', 'wb') as f:
            f.write(struct.pack('<Q', 150_000_000))
            f.seek(150_000_100)
            f.write(b'\0')
        return out / 'huge.safetensors', ['over the limit']
    if case == 'zero bytes':
        (out / 'empty.safetensors').write_bytes(b'')
        return out / 'empty.safetensors', ['safetensors']
    header, length, names = {
        'offsets past the end': (_with(header, first, data_offsets=[0, len(data) + 4096]), None, [first]),
        'header length past the end': (b'{}', 2 ** 60, ['exceeds']),
        'header not JSON': (b'\xff\xfe{nope', None, ['safetensors']),
        'header a JSON list': ([1, 2], None, ['JSON list']),
        'unknown dtype': (_with(header, first, dtype='F99'), None, [first, 'F99']),
        'shape not filling its bytes': (_with(header, first, shape=[7, 7, 7, 7]), None, [first]),
        'offsets backwards': (_with(header, first, data_offsets=[64, 0]), None, [first]),
    }[case]
    return _write_raw(out / 'attacked.safetensors', header, data, length), names


BAD_FILES = ['truncated', 'offsets past the end', 'header length past the end', 'huge header', 'header not JSON',
             'header a JSON list', 'unknown dtype', 'shape not filling its bytes', 'offsets backwards', 'zero bytes']


@pytest.mark.parametrize('case', BAD_FILES)
def test_malformed_safetensors_is_refused_naming_the_file(trained, tmp_path: Path, case: str):
    path, names = _bad_file(case, trained['weights'], tmp_path)
    dst = tmp_path / 'out.safetensors'
    dst.write_bytes(b'what was there before')
    proc = cli('convert', str(path), str(dst), '--to', 'scepter')
    judge(f'ckpt: {case}', proc, names=[path.name, *names],
          intact=lambda: _intact(trained)() and dst.read_bytes() == b'what was there before')


class _Payload:
    def __init__(self, code: str):
        self.code = code

    def __reduce__(self):
        return exec, (self.code,)


@pytest.mark.parametrize('suffix, how', [('.ckpt', 'torch'), ('.pt', 'torch'), ('.bin', 'pickle'), ('.pth', 'torch')])
def test_malicious_pickle_is_refused_and_never_runs(trained, tmp_path: Path, suffix: str, how: str):
    code, marker = canary(tmp_path)
    evil = tmp_path / f'evil{suffix}'
    obj = {'state_dict': {'model.x': torch.zeros(1)}, 'payload': _Payload(code)}
    if how == 'torch':
        torch.save(obj, evil)
    else:
        evil.write_bytes(pickle.dumps(obj))
    proc = cli('convert', str(evil), str(tmp_path / 'out.safetensors'), '--to', 'scepter')
    judge(f'ckpt: malicious pickle {suffix}', proc, names=[evil.name], markers=[marker], intact=_intact(trained))
    assert not (tmp_path / 'out.safetensors').exists()


def test_malicious_lora_pickle_is_refused(trained, tmp_path: Path):
    code, marker = canary(tmp_path)
    evil = tmp_path / 'style.pt'
    torch.save({'lora_unet_x.lora_down.weight': torch.zeros(1), 'p': _Payload(code)}, evil)
    proc = cli('infer', '--pretrained-model', str(trained['work']), '--lora', str(evil), '--prompt', 'x',
               '--sample-steps', '1', '--out', str(tmp_path / 'o'))
    judge('ckpt: malicious LoRA pickle', proc, names=[evil.name], markers=[marker], intact=_intact(trained))


def _copy_run(trained: dict, dst: Path) -> Path:
    shutil.copytree(trained['work'] / 'checkpoints', dst / 'checkpoints')
    return dst


def _rewrite(weights: Path, change) -> str:
    sd = {k: v.clone() for k, v in load_state_dict(weights).items()}
    key = change(sd)
    from scepter_core.checkpoint import save_state_dict
    save_state_dict(sd, weights, metadata=read_safetensors_header(weights)[0].get('__metadata__'))
    return key


def _infer(run: Path, out: Path):
    return cli('infer', '--pretrained-model', str(run), '--prompt', 'a red circle', '--sample-steps', '1',
               '--out', str(out))


def test_wrong_shape_names_key_both_shapes_and_file(trained, tmp_path: Path):
    run = _copy_run(trained, tmp_path / 'run')
    weights = run / 'checkpoints' / 'step-000002' / 'model.safetensors'

    def widen(sd):
        key = next(k for k, v in sd.items() if k.endswith('.weight') and v.dim() == 4)
        sd[key] = torch.zeros(sd[key].shape[0] + 1, *sd[key].shape[1:])
        return key
    key = _rewrite(weights, widen)
    line = judge('ckpt: wrong shape', _infer(run, tmp_path / 'o'), names=[key, 'model.safetensors'],
                 intact=_intact(trained))
    assert line.count('(') >= 2, line  # both shapes


def test_integer_tensor_for_a_float_weight_is_refused(trained, tmp_path: Path):
    run = _copy_run(trained, tmp_path / 'run')
    weights = run / 'checkpoints' / 'step-000002' / 'model.safetensors'

    def to_int(sd):
        key = next(k for k, v in sd.items() if k.endswith('.weight') and v.dim() == 4)
        sd[key] = sd[key].to(torch.int64)
        return key
    key = _rewrite(weights, to_int)
    judge('ckpt: wrong dtype', _infer(run, tmp_path / 'o'), names=[key, 'int64', 'model.safetensors'],
          intact=_intact(trained))


def test_diffusers_folder_without_unet_config_names_folder_and_file(trained, tmp_path: Path):
    folder = tmp_path / 'sd-folder'
    (folder / 'unet').mkdir(parents=True)
    (folder / 'vae').mkdir()
    (folder / 'model_index.json').write_text('{"_class_name": "StableDiffusionPipeline"}')
    shutil.copy(trained['weights'], folder / 'unet' / 'diffusion_pytorch_model.safetensors')
    proc = cli('infer', '--pretrained-model', str(folder), '--prompt', 'x', '--sample-steps', '1',
               '--out', str(tmp_path / 'o'))
    judge('ckpt: diffusers folder without config.json', proc, names=[str(folder), 'unet/config.json'],
          intact=_intact(trained))


def _point_latest(run: Path, text: str) -> None:
    (run / 'checkpoints' / 'latest').write_text(text + '\n')


def _fallback_case(trained: dict, tmp_path: Path, name: str, break_it) -> None:
    run = _copy_run(trained, tmp_path / 'run')
    said = break_it(run)
    proc = _infer(run, tmp_path / 'o')
    judge(f'ckpt: latest {name}', proc, intact=_intact(trained), error=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    warned = [ln for ln in (proc.stdout + proc.stderr).splitlines() if 'newest complete checkpoint' in ln]
    assert len(warned) == 1 and said in warned[0] and 'step-000002' in warned[0], proc.stderr[-3000:]
    assert (tmp_path / 'o' / '00000.png').is_file()


def test_latest_pointing_nowhere_falls_back_and_says_so(trained, tmp_path: Path):
    _fallback_case(trained, tmp_path, 'pointing nowhere',
                   lambda run: _point_latest(run, 'step-000099') or 'step-000099')


def test_latest_pointing_to_a_half_written_step_falls_back(trained, tmp_path: Path):
    def half_written(run: Path) -> str:
        step = run / 'checkpoints' / 'step-000004'
        step.mkdir()
        full = trained['weights'].read_bytes()
        (step / 'model.safetensors').write_bytes(full[:len(full) // 3])
        shutil.copy(run / 'checkpoints' / 'step-000002' / 'config.yaml', step / 'config.yaml')
        _point_latest(run, 'step-000004')
        return 'half-written'
    _fallback_case(trained, tmp_path, 'to a half-written step', half_written)


def test_latest_pointing_outside_its_folder_falls_back(trained, tmp_path: Path):
    _fallback_case(trained, tmp_path, 'pointing outside',
                   lambda run: _point_latest(run, '../../../etc') or 'not a step folder name')


def test_no_complete_checkpoint_left_is_one_line(trained, tmp_path: Path):
    run = _copy_run(trained, tmp_path / 'run')
    weights = run / 'checkpoints' / 'step-000002' / 'model.safetensors'
    weights.write_bytes(weights.read_bytes()[:1000])
    _point_latest(run, 'step-000002')
    judge('ckpt: no complete checkpoint', _infer(run, tmp_path / 'o'), names=['latest', 'no complete checkpoint'],
          intact=_intact(trained))


def test_malicious_training_state_is_refused_on_resume(trained, tmp_path: Path):
    code, marker = canary(tmp_path)
    run = _copy_run(trained, tmp_path / 'run')
    state = run / 'checkpoints' / 'step-000002' / 'training_state.pt'
    torch.save({'step': 2, 'p': _Payload(code)}, state)
    recipe = write_recipe(tmp_path / 'recipe.yaml', tiny_recipe(run, 3))
    proc = cli('train', '--cfg', str(recipe), '--resume', 'latest', env={'SCEPTER_PROGRESS': '0'})
    judge('ckpt: malicious training_state.pt', proc, names=['training_state.pt'], markers=[marker],
          intact=_intact(trained))

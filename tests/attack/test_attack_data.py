"""Attack corpus, data: broken and unusual images, list files with missing columns, bad encodings,
paths that escape the data root or point at the network, empty datasets, huge and emoji prompts.
A bad image is skipped, counted and named once (training goes on); a bad list file is one line
naming the file and line; nothing goes to the network unless asked."""
from __future__ import annotations

import io
import json
import struct
import sys
import threading
import zlib
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness import cli, judge

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from e2e.conftest import TO_TENSOR, tiny_recipe, write_recipe  # noqa: E402  (the tiny model)

from scepter_core.data import sources  # noqa: E402
from scepter_core.data.images import decode_rgb  # noqa: E402
from scepter_core.data.transforms.io import read_rgb  # noqa: E402


# ---- images ----------------------------------------------------------------------------------

def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data) & 0xffffffff)


def png_bytes(width: int, height: int, bit_depth: int = 8, color_type: int = 2, rows: bytes = b'') -> bytes:
    """A PNG written by hand (any header, any payload): how bombs and 16-bit RGB files are made."""
    ihdr = struct.pack('>IIBBBBB', width, height, bit_depth, color_type, 0, 0, 0)
    return b'\x89PNG\r\n\x1a\n' + _chunk(b'IHDR', ihdr) + _chunk(b'IDAT', zlib.compress(rows)) + _chunk(b'IEND', b'')


def _save(image: Image.Image, fmt: str = 'PNG', **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def _noise(size: int = 16, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8))


GREY16 = np.full((16, 16), 32896, dtype=np.uint16)  # 32896 / 257 = 128: mid grey, not white


def _palette_alpha() -> bytes:
    p = Image.new('P', (16, 16), 0)
    p.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    p.paste(1, (0, 0, 8, 16))
    return _save(p, transparency=0)  # index 0 (red) transparent: the right half comes out white


GOOD = {  # name -> bytes; each decodes to a 16x16 RGB image
    'rgb.png': lambda: _save(_noise()),
    'grey16.png': lambda: _save(Image.fromarray(GREY16)),
    'rgb16.png': lambda: png_bytes(16, 16, 16, 2, b''.join(b'\0' + struct.pack('>3H', 65535, 32896, 0) * 16
                                                           for _ in range(16))),
    'cmyk.jpg': lambda: _save(Image.new('CMYK', (16, 16), (0, 255, 255, 0)), 'JPEG', quality=95),
    'palette_alpha.png': _palette_alpha,
    'rgba.png': lambda: _save(Image.new('RGBA', (16, 16), (0, 0, 0, 0))),
    'la.png': lambda: _save(Image.new('LA', (16, 16), (0, 0))),  # black, transparent
}
BAD = {  # name -> (bytes, a word its reason must hold)
    'empty.png': (lambda: b'', 'zero bytes'),
    'truncated.png': (lambda: _save(_noise(64))[:300], 'truncated'),
    'garbage.jpg': (lambda: bytes(range(256)) * 4, 'not an image'),
    'text.png': (lambda: b'hello, I am not a picture\n', 'not an image'),
    'bomb.png': (lambda: png_bytes(100_000, 100_000), 'decompression bomb'),  # 10^10 pixels claimed
    'bomb_under_pil_limit.png': (lambda: png_bytes(9000, 9000), 'MAX_PIXELS'),  # 81 MP: only our limit catches it
}


def _image_folder(root: Path, good=GOOD, bad=BAD) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, make in good.items():
        (root / name).write_bytes(make())
    for name, (make, _) in bad.items():
        (root / name).write_bytes(make())
    return root


def test_modes_decode_to_rgb_scaled_not_clipped(tmp_path: Path):
    """16-bit greyscale and RGB keep their tones (not 99.6% white); alpha and palette transparency
    become white; CMYK converts; the dataset reader (read_rgb) gives the same pixels."""
    for name, make in GOOD.items():
        (tmp_path / name).write_bytes(make())
    px = {name: np.asarray(decode_rgb((tmp_path / name).read_bytes(), name), dtype=int) for name in GOOD}
    assert all(a.shape == (16, 16, 3) for a in px.values())
    assert np.all(px['grey16.png'] == 128), np.unique(px['grey16.png'])
    assert tuple(px['rgb16.png'][0, 0]) == (255, 128, 0)
    assert np.abs(px['cmyk.jpg'][8, 8] - [255, 0, 0]).max() <= 8
    assert tuple(px['palette_alpha.png'][0, 0]) == (0, 0, 255) and tuple(px['palette_alpha.png'][0, 15]) == (255,) * 3
    assert np.all(px['rgba.png'] == 255) and np.all(px['la.png'] == 255)
    for name in GOOD:
        assert np.array_equal(np.asarray(read_rgb(str(tmp_path / name)), dtype=int), px[name]), name


def test_inspect_names_each_bad_image_and_counts_the_rest(tmp_path: Path):
    folder = _image_folder(tmp_path / 'images')
    (folder / 'dangling.png').symlink_to(tmp_path / 'gone.png')
    (folder / 'linked.png').symlink_to(folder / 'rgb.png')  # a symlinked file is read: its target is
    (folder / 'sub').mkdir()
    (folder / 'sub' / 'loop').symlink_to(folder, target_is_directory=True)  # a folder link is not entered
    proc = cli('data', 'inspect', str(folder), '--json', '--plot', '', '--resolution', '16', '--alignment', '8')
    judge('data: inspect a folder of bad images', proc, error=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    bad = {Path(b['path']).name: b['reason'] for b in report['bad_files']}
    assert report['images'] == len(GOOD) + 1, report
    for name, (_, word) in {**BAD, 'dangling.png': (None, 'No such file')}.items():
        outcome = judge(f'data: {name}', proc, error=False)
        assert name in bad and word in bad[name], (name, bad.get(name), outcome)


# ---- list files ------------------------------------------------------------------------------

class _Canary(BaseHTTPRequestHandler):
    marker: Path

    def do_GET(self):  # noqa: N802  (http.server's name)
        self.marker.write_text(self.path)
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def http_canary(tmp_path: Path):
    """A local web server that leaves a file behind when anything asks it for a file."""
    handler = type('Handler', (_Canary,), {'marker': tmp_path / 'network.hit'})
    server = HTTPServer(('127.0.0.1', 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f'http://127.0.0.1:{server.server_port}', handler.marker
    server.shutdown()
    server.server_close()


def _csv_folder(root: Path, text: str | bytes, name: str = 'train.csv') -> Path:
    _image_folder(root, {'a.png': GOOD['rgb.png'], 'b.png': GOOD['grey16.png']}, {})
    data = text.encode() if isinstance(text, str) else text
    (root / name).write_bytes(data)
    return root / name


LIST_CASES = {  # name -> (file name, content, what the error names besides the file)
    'csv without an image column': ('train.csv', 'Prompt,Other\na cat,1\n', ['Target:FILE']),
    'csv row without its image': ('train.csv', 'Target:FILE,Prompt\na.png,one\n,two\n', ['line 3', 'Target:FILE']),
    'csv not UTF-8': ('train.csv', b'Target:FILE,Prompt\na.png,caf\xe9\n', ['line 2', 'UTF-8']),
    'csv header only': ('train.csv', 'Target:FILE,Prompt\n', ['no images']),
    'csv zero bytes': ('train.csv', b'', ['Target:FILE']),
    'csv row climbing out with ..': ('train.csv', 'Target:FILE,Prompt\na.png,x\n../../etc/passwd,y\n',
                                     ['line 3', '../../etc/passwd', 'ALLOW_OUTSIDE_ROOT']),
    'csv row with an absolute path': ('train.csv', 'Target:FILE,Prompt\n/etc/hostname,x\n',
                                      ['line 2', '/etc/hostname', 'ALLOW_OUTSIDE_ROOT']),
    'txt index climbing out with ..': ('index.txt', 'a.png#;#one\n../b.png#;#two\n', ['line 2', '../b.png']),
    'jsonl without file_name': ('metadata.jsonl', '{"file_name": "a.png", "text": "x"}\n{"text": "y"}\n',
                                ['line 2', 'file_name']),
    'jsonl not UTF-8': ('metadata.jsonl', b'{"file_name": "a.png", "text": "\xff"}\n', ['line 1', 'UTF-8']),
    'jsonl climbing out with ..': ('metadata.jsonl', '{"file_name": "../../x.png", "text": "x"}\n', ['line 1']),
}


@pytest.mark.parametrize('case', list(LIST_CASES))
def test_bad_list_file_is_one_line_naming_file_and_line(tmp_path: Path, case: str):
    name, text, names = LIST_CASES[case]
    path = _csv_folder(tmp_path / 'data', text, name)
    proc = cli('data', 'inspect', str(path), '--json', '--plot', '')
    judge(f'data: {case}', proc, names=[name, *names], intact=lambda: (tmp_path / 'data' / 'a.png').is_file())


def test_sidecar_caption_not_utf8_names_the_caption_file(tmp_path: Path):
    folder = _image_folder(tmp_path / 'images', {'a.png': GOOD['rgb.png']}, {})
    (folder / 'a.txt').write_bytes(b'a red \xff circle')
    judge('data: sidecar caption not UTF-8', cli('data', 'inspect', str(folder), '--json', '--plot', ''),
          names=['a.txt', 'line 1', 'UTF-8'])


@pytest.mark.parametrize('kind', ['empty folder', 'folder of captions only'])
def test_empty_dataset_is_one_line(tmp_path: Path, kind: str):
    folder = tmp_path / 'nothing'
    folder.mkdir()
    if kind != 'empty folder':
        (folder / 'a.txt').write_text('a caption without its image')
    judge(f'data: {kind}', cli('data', 'inspect', str(folder), '--json', '--plot', ''),
          names=['nothing', 'no images'])


def test_url_in_a_list_file_is_refused_and_nothing_is_fetched(tmp_path: Path, http_canary):
    url, hit = http_canary
    path = _csv_folder(tmp_path / 'data', f'Target:FILE,Prompt\na.png,x\n{url}/cat.png,y\n')
    proc = cli('data', 'inspect', str(path), '--json', '--plot', '')
    judge('data: http:// row (inspect)', proc, names=['train.csv', 'line 3', f'{url}/cat.png', 'ALLOW_REMOTE_PATHS'],
          markers=[hit])
    assert sources.records(str(path), allow_remote=True)[1]['img_path'] == f'{url}/cat.png'  # allowed when asked
    assert not hit.exists()


# ---- training on such data -------------------------------------------------------------------

def _pair_recipe(work: Path, folder: Path, steps: int) -> dict:
    cfg = tiny_recipe(work, steps)
    cfg['SOLVER']['TRAIN_DATA'] = {'NAME': 'ImageTextPairFolderDataset', 'DATA_FOLDER': str(folder),
                                   'BATCH_SIZE': 4, 'TRANSFORMS': [{'NAME': 'LoadImageFromFile'}, *TO_TENSOR]}
    return cfg


@pytest.fixture(scope='module')
def bad_run(tmp_path_factory):
    """Two steps on 4 good images of unusual modes and 2 bad ones (a 10^10-pixel bomb, a truncated file)."""
    root = tmp_path_factory.mktemp('bad_run')
    good = {k: GOOD[k] for k in ('rgb.png', 'grey16.png', 'cmyk.jpg', 'palette_alpha.png')}
    bad = {k: BAD[k] for k in ('bomb.png', 'truncated.png')}
    folder = _image_folder(root / 'data', good, bad)
    rows = ''.join(f'{name},a shape {i}\n' for i, name in enumerate([*good, *bad]))
    (folder / 'train.csv').write_text('Target:FILE,Prompt\n' + rows)
    recipe = write_recipe(root / 'recipe.yaml', _pair_recipe(root / 'work', folder, 2))
    return root, bad, cli('train', '--cfg', str(recipe), env={'SCEPTER_PROGRESS': '0'})


def test_bad_images_are_skipped_counted_and_named_once(bad_run):
    root, bad, proc = bad_run
    judge('data: train over a bomb and a truncated image', proc, error=False,
          intact=lambda: (root / 'data' / 'rgb.png').is_file())
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout + proc.stderr
    for name in bad:
        said = [ln for ln in text.splitlines() if 'skipped' in ln and name in ln]
        assert len(said) == 1, (name, said)
    assert 'skipped samples' in text  # and counted in the log line
    assert (root / 'work' / 'checkpoints' / 'step-000002' / 'model.safetensors').is_file()


def test_url_row_never_makes_the_trainer_go_to_the_network(tmp_path: Path, http_canary):
    url, hit = http_canary
    folder = tmp_path / 'data'
    _csv_folder(folder, f'Target:FILE,Prompt\na.png,x\nb.png,y\n{url}/cat.png,z\n')
    recipe = write_recipe(tmp_path / 'recipe.yaml', _pair_recipe(tmp_path / 'work', folder, 1))
    proc = cli('train', '--cfg', str(recipe), env={'SCEPTER_PROGRESS': '0'})
    judge('data: http:// row (train)', proc, names=['train.csv', 'line 4', 'ALLOW_REMOTE_PATHS'], markers=[hit])


def test_huge_and_emoji_prompts_generate(bad_run, tmp_path: Path):
    root, _, _ = bad_run
    long, emoji = 'a red circle ' * 800, '🦄🌈 a blue square on 白い background 🎨'
    proc = cli('infer', '--pretrained-model', str(root / 'work'), '--prompt', long, '--prompt', emoji,
               '--sample-steps', '1', '--out', str(tmp_path / 'o'))
    judge('data: 10k-character and emoji prompts', proc, error=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(long) > 10_000 and len(list((tmp_path / 'o').glob('0000*.png'))) == 2


def test_index_rule_without_and_with_a_data_root(tmp_path: Path):
    """ImageTextPairDataset: without DATA_ROOT an index may name absolute paths; with one, rows stay
    under it unless ALLOW_OUTSIDE_ROOT; a URL needs ALLOW_REMOTE_PATHS (nothing is fetched here)."""
    from scepter_core.data import ImageTextPairDataset
    from scepter_core.errors import ConfigError
    line = f'{tmp_path}/a.png#;#16#;#16#;#a cat'
    assert ImageTextPairDataset({'DATA_LIST': [line]}).records[0]['img_path'] == f'{tmp_path}/a.png'
    with pytest.raises(ConfigError, match='ALLOW_OUTSIDE_ROOT'):
        ImageTextPairDataset({'DATA_ROOT': '/srv/data', 'DATA_LIST': [line]})
    allowed = ImageTextPairDataset({'DATA_ROOT': '/srv/data', 'DATA_LIST': [line], 'ALLOW_OUTSIDE_ROOT': True})
    assert allowed.records[0]['img_path'] == f'{tmp_path}/a.png'
    url = 'http://example.invalid/a.png#;#16#;#16#;#a cat'
    with pytest.raises(ConfigError, match=r'DATA_LIST.*line 1.*ALLOW_REMOTE_PATHS'):
        ImageTextPairDataset({'DATA_LIST': [url]})
    assert ImageTextPairDataset({'DATA_LIST': [url], 'ALLOW_REMOTE_PATHS': True}).records[0]['img_path'] == \
        'http://example.invalid/a.png'

"""`scepter data inspect` on a hand-made folder with broken files: counts, bad files named,
the bucket table, JSON shape and the histogram PNG (real subprocesses)."""
from __future__ import annotations

import json
import subprocess
import sys

from folder_files import make_folder
from PIL import Image

# Hand-derived for folder_files.SHAPES + nocap.png (64x64) at a 64x64 budget, alignment 16:
# 64/72/90 square and nocap -> 64x64; 48x96, 80x120, 64x128 (w/h 1.5-2) -> 48x80; their
# transposes -> 80x48; 40x160 -> 32x128; 160x40 -> 128x32; 50x70 is nearest 48x80 but too
# small for it, so (not upscaled) its own size floored: 48x64.
EXPECTED = {(32, 128): 1, (48, 64): 1, (48, 80): 3, (64, 64): 4, (80, 48): 3, (128, 32): 1}


def inspect(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-m', 'scepter_cli', 'data', 'inspect', *args], capture_output=True,
                          text=True, timeout=180, cwd=cwd)


def test_inspect_counts_match_the_hand_made_folder(tmp_path):
    folder = make_folder(tmp_path / 'imgs', broken=True)
    proc = inspect(str(folder), '--resolution', '64', '--alignment', '16', '--json',
                   '--plot', str(tmp_path / 'hist.png'))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report['images'] == 13 and report['bad'] == 4 and report['no_caption'] == 1
    assert {tuple(b['size']): b['count'] for b in report['buckets']} == EXPECTED
    assert all(set(b) == {'size', 'count'} for b in report['buckets'])
    reasons = {b['path'].rsplit('/', 1)[1]: b['reason'] for b in report['bad_files']}
    assert set(reasons) == {'zero.png', 'text.png', 'cut.png', 'bomb.png'} and 'truncated' in reasons['cut.png']
    with Image.open(tmp_path / 'hist.png') as im:
        assert im.size == (640, 360)

    table = inspect(str(folder), '-r', '64', '--alignment', '16', '--plot', '', cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    assert '13 readable images, 4 bad, 1 without a caption' in table.stdout
    assert table.stdout.count('zero.png') == 1 and '48 x 64' in table.stdout
    assert not (tmp_path / 'aspect_ratios.png').exists()


def test_inspect_missing_path_is_one_line():
    proc = inspect('/nonexistent/folder')
    assert proc.returncode != 0 and "'/nonexistent/folder' does not exist" in proc.stderr
    assert 'Traceback' not in proc.stderr

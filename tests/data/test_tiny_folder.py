"""examples/tiny_folder.yaml trains the tiny example's model (from scratch here: no trained
checkpoint in a test) from a folder with sidecar captions and broken files, and from
WebDataset shards of the same files: same buckets, same losses; buckets.json says what it
trained on; bad files are skipped and named once."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from folder_files import make_folder
from test_sources import write_shards

ROOT = Path(__file__).resolve().parents[2]
SHAPES = [(64, 64), (72, 72), (96, 48), (128, 64)]  # + nocap.png and cut.png (64x64) from `broken`


def train(data_dir: Path, work: Path) -> Path:
    env = {**os.environ, 'DATA_DIR': str(data_dir), 'TINY_WORK_DIR': str(work), 'SCEPTER_PROGRESS': '0'}
    sets = ['SOLVER.MAX_STEPS=3', 'SOLVER.TRAIN_DATA.BATCH_SIZE=2', 'SOLVER.TRAIN_DATA.NUM_WORKERS=0',
            'SOLVER.MODEL.PRETRAINED_MODEL=null', 'SOLVER.MODEL.FIRST_STAGE_MODEL.PRETRAINED_MODEL=null']
    args = [sys.executable, '-m', 'scepter_cli', 'train', '--cfg', str(ROOT / 'examples' / 'tiny_folder.yaml')]
    for s in sets:
        args += ['--set', s]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600, cwd=work.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return work / 'tiny_folder'


@pytest.fixture(scope='module')
def folder_run(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp('tiny_folder')
    folder = make_folder(tmp / 'imgs', shapes=SHAPES, broken=True)
    return folder, train(folder, tmp / 'a')


@pytest.mark.timeout(600)
def test_tiny_folder_trains_from_a_folder_with_sidecar_captions(folder_run):
    _, a = folder_run
    buckets = json.loads((a / 'buckets.json').read_text())['buckets']
    # 64x64: 64, 72, nocap, cut (truncated: found when read); 80x48: 96x48 and 128x64.
    # Batches of 2 from one bucket: 2 + 1 steps make an epoch, so 3 steps read every file.
    assert buckets == [{'size': [64, 64], 'count': 4, 'steps': 2}, {'size': [80, 48], 'count': 2, 'steps': 1}]
    log = (a / 'std_log.txt').read_text()
    for name in ('zero.png', 'text.png', 'bomb.png', 'cut.png'):
        assert log.count(name) == 1, name
    losses = json.loads((a / 'loss_history.json').read_text())
    assert [s for s, _ in losses] == [1, 2, 3] and all(0 < v < 10 for _, v in losses)


@pytest.mark.timeout(600)
def test_tiny_folder_trains_from_webdataset_shards_of_the_same_files(folder_run, tmp_path):
    folder, a = folder_run
    write_shards(folder, tmp_path / 'shards')
    b = train(tmp_path / 'shards', tmp_path / 'b')
    assert (b / 'buckets.json').read_text() == (a / 'buckets.json').read_text()
    # the same bytes in the same order with the same seed: the same losses
    assert json.loads((b / 'loss_history.json').read_text()) == json.loads((a / 'loss_history.json').read_text())

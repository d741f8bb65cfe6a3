"""Studio fixtures: a root with a tiny trained model, a recipe, a captioned image folder; the
Studio served in this process; a real headless Chromium (Debian's chromium + chromedriver)."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml
from PIL import Image

from e2e.conftest import run_cli, tiny_recipe, write_recipe

ROOT = Path(__file__).resolve().parents[2]
# The README's pictures are re-taken with SCEPTER_SHOTS=docs/images; a plain test run keeps the tree clean.
SHOTS = Path(os.environ.get('SCEPTER_SHOTS') or Path(os.environ.get('TMPDIR', '/tmp')) / 'scepter-studio-shots')
SHOTS = SHOTS if SHOTS.is_absolute() else ROOT / SHOTS
CHROMIUM, DRIVER = '/usr/bin/chromium', '/usr/bin/chromedriver'
CHROME_FLAGS = ['--headless', '--no-sandbox', '--disable-background-networking', '--disable-component-update',
                '--disable-sync', '--disable-quic', '--no-first-run', '--disable-gpu', '--window-size=1280,1400']
HOOKS = [{'NAME': 'BackwardHook'}, {'NAME': 'LogHook', 'LOG_INTERVAL': 1},
         {'NAME': 'TensorboardLogHook', 'LOG_INTERVAL': 1},
         {'NAME': 'ProbeDataHook', 'PROB_INTERVAL': 4, 'PROMPTS': ['a red circle on a white background']},
         {'NAME': 'CheckpointHook', 'INTERVAL': 2}]


def studio_recipe(work_dir: Path, steps: int) -> dict:
    """The e2e suite's 16 px model, with TensorBoard events and probe grids."""
    cfg = tiny_recipe(work_dir, steps)
    cfg['SOLVER']['TRAIN_HOOKS'] = HOOKS
    return cfg


@pytest.fixture(scope='session')
def studio_root(tmp_path_factory) -> Path:
    """models/tiny (trained 4 steps), recipes/tiny.yaml, data/ (three captioned PNGs)."""
    root = tmp_path_factory.mktemp('studio_root')
    (root / 'recipes').mkdir()
    recipe = write_recipe(root / 'recipes' / 'tiny.yaml', studio_recipe(root / 'models' / 'tiny', 4))
    run_cli('train', '--cfg', str(recipe), timeout=600)
    data = root / 'data'
    data.mkdir()
    for i, colour in enumerate(['red', 'green', 'blue']):
        Image.new('RGB', (32, 32), colour).save(data / f'{i}.png')
        (data / f'{i}.txt').write_text(f'a {colour} square\n')
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


class Served:
    """The Studio on a uvicorn thread of this process."""

    def __init__(self, root: Path, token: str | None = None):
        import uvicorn

        from scepter_studio.app import Studio
        from scepter_studio.server import make_asgi
        self.studio = Studio.create([str(root)])
        self.port = free_port()
        self.url = f'http://127.0.0.1:{self.port}/'
        config = uvicorn.Config(make_asgi(self.studio, token, max_upload=2 ** 20, refresh_s=1.0),
                                host='127.0.0.1', port=self.port, log_level='warning',
                                timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        end = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > end or not self.thread.is_alive():
                raise RuntimeError('the studio server did not start')
            time.sleep(0.1)

    def close(self) -> None:
        for run in self.studio.runs.list():
            if run.state == 'running':
                self.studio.runs.stop(run.name)
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope='session')
def served(studio_root):
    s = Served(studio_root)
    yield s
    s.close()


def _ensure_chromium() -> str | None:
    """None when chromium and its driver are there (installed with apt when missing and
    possible), else the reason they are not."""
    if Path(CHROMIUM).exists() and Path(DRIVER).exists():
        return None
    if shutil.which('apt-get') is None or os.geteuid() != 0:
        return 'chromium / chromium-driver missing and apt-get is not available as root to install them'
    for cmd in (['apt-get', 'update'], ['apt-get', 'install', '-y', 'chromium', 'chromium-driver']):
        if subprocess.run(cmd, capture_output=True, timeout=900).returncode != 0:
            return f'chromium could not be installed ({" ".join(cmd)} failed)'
    return None if Path(CHROMIUM).exists() and Path(DRIVER).exists() else 'chromium installed but not found'


@pytest.fixture(scope='session')
def browser(tmp_path_factory):
    reason = _ensure_chromium()
    if reason:
        pytest.skip(reason)
    webdriver = pytest.importorskip('selenium.webdriver', reason='selenium is not installed')
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in [*CHROME_FLAGS, f'--user-data-dir={tmp_path_factory.mktemp("chromium_profile")}']:
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.set_page_load_timeout(120)
    yield driver
    driver.quit()


def recipe_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())

"""Safety: loopback unless a token is set, every request then carries it, file access stays
inside the roots, request bodies are size-limited."""
from __future__ import annotations

import os

import pytest

pytest.importorskip('gradio', reason='the studio extra (gradio) is not installed')

import httpx  # noqa: E402  (a gradio dependency)

from scepter_studio.datasets import list_images, save_caption
from scepter_studio.paths import Roots, StudioError
from scepter_studio.guard import check_bind

from e2e.conftest import run_cli

from .conftest import Served

TOKEN = 'studio-test-token-1'


def test_non_loopback_bind_without_a_token_is_refused_in_one_line():
    proc = run_cli('studio', '--host', '0.0.0.0', '--port', '7999', check=False, timeout=120)
    assert proc.returncode != 0
    first = proc.stderr.strip().splitlines()[0]
    assert '--host 0.0.0.0' in first and '--token' in first
    with pytest.raises(StudioError, match='--token'):
        check_bind('192.168.1.4', None)
    check_bind('127.0.0.1', None)
    check_bind('::1', None)
    check_bind('0.0.0.0', TOKEN)
    with pytest.raises(StudioError, match='8 characters'):
        check_bind('0.0.0.0', 'short')


@pytest.fixture(scope='module')
def guarded(studio_root):
    s = Served(studio_root, token=TOKEN)
    yield s
    s.close()


def test_with_a_token_every_request_needs_it(guarded):
    url = guarded.url
    for path in ('', 'config', 'gradio_api/info', 'gradio_api/queue/status'):
        assert httpx.get(url + path, timeout=30).status_code == 401, path
        assert httpx.get(url + path, params={'token': 'wrong-token-x'}, timeout=30).status_code == 403, path
    assert httpx.get(url, headers={'X-Scepter-Token': 'nope'}, timeout=30).status_code == 403
    page = httpx.get(url, params={'token': TOKEN}, timeout=30)
    assert page.status_code == 200 and 'Scepter Studio' in page.text
    cookie = page.cookies.get('scepter_studio_token')
    assert cookie == TOKEN  # the page's own requests carry it from here on
    assert httpx.get(url + 'config', cookies={'scepter_studio_token': TOKEN}, timeout=30).status_code == 200
    assert httpx.get(url + 'config', headers={'Authorization': f'Bearer {TOKEN}'}, timeout=30).status_code == 200


def test_uploads_over_the_limit_are_refused(guarded):
    auth = {'Authorization': f'Bearer {TOKEN}'}
    big = httpx.post(guarded.url + 'gradio_api/upload', headers=auth, timeout=60,
                     files={'files': ('big.png', b'\0' * (2 ** 20 + 1024), 'image/png')})
    assert big.status_code == 413
    small = httpx.post(guarded.url + 'gradio_api/upload', headers=auth, timeout=60,
                       files={'files': ('small.txt', b'hello', 'text/plain')})
    assert small.status_code == 200


def test_paths_outside_the_roots_are_refused(studio_root, tmp_path):
    roots = Roots([studio_root])
    outside = tmp_path / 'outside'
    outside.mkdir()
    (outside / 'secret.png').write_bytes(b'')
    os.symlink(outside, studio_root / 'escape')
    try:
        assert roots.resolve('data') == studio_root / 'data'
        for bad in ('../outside', 'data/../../outside', str(outside), '/etc/passwd', 'escape', 'escape/secret.png'):
            with pytest.raises(StudioError, match="outside the studio roots|'..' is not allowed"):
                roots.resolve(bad)
        with pytest.raises(StudioError, match='outside the studio roots'):
            list_images(roots, str(outside))
        with pytest.raises(StudioError, match='outside the studio roots'):
            save_caption(roots, str(outside / 'secret.png'), 'x')
        assert not (outside / 'secret.txt').exists()
    finally:
        os.unlink(studio_root / 'escape')


def test_the_file_route_serves_nothing_outside_the_roots(served, tmp_path):
    secret = tmp_path / 'secret.txt'
    secret.write_text('do not serve')
    for path in (str(secret), '/etc/passwd'):
        r = httpx.get(served.url + 'gradio_api/file=' + path, timeout=30)
        assert r.status_code in (403, 404) and 'do not serve' not in r.text


def test_the_scepter_studio_command_serves_behind_its_token(studio_root):
    import subprocess
    import sys
    import time

    from .conftest import free_port
    port = free_port()
    url = f'http://127.0.0.1:{port}/'
    proc = subprocess.Popen([sys.executable, '-m', 'scepter_cli', 'studio', '--root', str(studio_root),
                             '--port', str(port), '--token', TOKEN], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        end = time.monotonic() + 240
        while True:
            try:
                status = httpx.get(url, timeout=10).status_code
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read().decode()
                assert time.monotonic() < end, 'scepter studio did not start listening'
                time.sleep(0.5)
        assert status == 401
        page = httpx.get(url, params={'token': TOKEN}, timeout=30)
        assert page.status_code == 200 and 'Scepter Studio' in page.text
    finally:
        proc.terminate()
        proc.wait(30)

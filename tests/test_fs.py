"""FS: local, file://, memory://, http:// (a server on 127.0.0.1), caching, atomic writes, mirrors."""
from __future__ import annotations

import functools
import http.server
import os
import stat
import threading
import uuid
from pathlib import Path

import pytest

from scepter_core.fs import FS, FileNotAvailable, LocalPath


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a directory (with HTML listings) and records every GET path."""

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self.server.hits.append(self.path)
        super().do_GET()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass  # clients closing early (fsspec probing sizes) is not an error here


@pytest.fixture(scope='module')
def http_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('www')
    (root / 'a.txt').write_text('hello')
    (root / 'd' / 'sub').mkdir(parents=True)
    (root / 'd' / 'one.txt').write_text('one')
    (root / 'd' / 'sub' / 'two.txt').write_text('two')
    server = _Server(('127.0.0.1', 0), functools.partial(_Handler, directory=str(root)))
    server.hits = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f'http://127.0.0.1:{server.server_port}', server
    server.shutdown()
    server.server_close()


# ---- local ------------------------------------------------------------------------------

def test_local_and_file_urls(tmp_path):
    f = tmp_path / 'x.bin'
    FS.put_object(b'abc', str(f))
    for p in (str(f), f'file://{f}'):
        assert FS.get_from(p) == str(f) and FS.get_object(p) == b'abc'
        assert FS.exists(p) and FS.isfile(p) and not FS.isdir(p)
    with FS.get_from(str(f)) as local:  # also a context manager, as in Scepter
        assert Path(local).read_bytes() == b'abc'
    assert isinstance(FS.get_dir_to_local_dir(str(tmp_path)), LocalPath)


def test_make_dir_walk_dir_and_remove(tmp_path):
    FS.make_dir(str(tmp_path / 'a' / 'b'))
    FS.put_object(b'1', str(tmp_path / 'a' / 'one.txt'))
    FS.put_object(b'2', str(tmp_path / 'a' / 'b' / 'two.txt'))
    assert FS.isdir(str(tmp_path / 'a' / 'b'))
    assert FS.walk_dir(str(tmp_path / 'a')) == [str(tmp_path / 'a' / 'b' / 'two.txt'), str(tmp_path / 'a' / 'one.txt')]
    assert FS.walk_dir(str(tmp_path / 'a'), recurse=False) == [str(tmp_path / 'a' / 'one.txt')]
    FS.remove(str(tmp_path / 'a'))
    assert not FS.exists(str(tmp_path / 'a'))


def test_missing_local_file_is_one_line(tmp_path):
    with pytest.raises(FileNotAvailable, match=r"^file not found: '.*nope.bin'$"):
        FS.get_from(str(tmp_path / 'nope.bin'))
    with pytest.raises(FileNotFoundError):
        FS.get_object(str(tmp_path / 'nope.bin'))


def test_put_to_is_atomic(tmp_path):
    target = tmp_path / 'sub' / 'ckpt.bin'
    with FS.put_to(str(target)) as tmp:
        assert tmp != str(target) and Path(tmp).parent == target.parent
        Path(tmp).write_bytes(b'old')
    assert target.read_bytes() == b'old'
    with pytest.raises(RuntimeError, match='crash mid-write'):
        with FS.put_to(str(target)) as tmp:
            Path(tmp).write_bytes(b'half')
            raise RuntimeError('crash mid-write')
    assert target.read_bytes() == b'old'
    assert sorted(p.name for p in target.parent.iterdir()) == ['ckpt.bin']  # no temporary left behind


def test_put_to_gives_normal_permissions(tmp_path):
    FS.put_object(b'x', str(tmp_path / 'f.bin'))
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / 'f.bin').stat().st_mode) == 0o666 & ~umask


# ---- memory:// ------------------------------------------------------------------------------

def test_memory_protocol_round_trip():
    root = f'memory://scepter-test-{uuid.uuid4().hex}'
    FS.make_dir(f'{root}/d')
    FS.put_object(b'one', f'{root}/d/one.txt')
    with FS.put_to(f'{root}/d/sub/two.txt') as tmp:
        Path(tmp).write_bytes(b'two')
    assert FS.exists(f'{root}/d/one.txt') and FS.isfile(f'{root}/d/one.txt') and FS.isdir(f'{root}/d')
    assert not FS.exists(f'{root}/nope')
    assert FS.get_object(f'{root}/d/sub/two.txt') == b'two'
    walked = FS.walk_dir(f'{root}/d')
    assert [w.rsplit('/d/', 1)[1] for w in walked] == ['one.txt', 'sub/two.txt']
    assert FS.get_object(walked[1]) == b'two'  # walked paths can be read back
    local = FS.get_from(f'{root}/d/one.txt')
    assert Path(local).read_bytes() == b'one' and str(local).startswith(os.environ['SCEPTER_CACHE'])
    local_dir = FS.get_dir_to_local_dir(f'{root}/d', wait_finish=True)
    assert (Path(local_dir) / 'sub' / 'two.txt').read_bytes() == b'two'
    FS.remove(f'{root}/d')
    assert not FS.exists(f'{root}/d/one.txt')


# ---- http:// ----------------------------------------------------------------------------------

def test_http_file_is_downloaded_once_then_cached(http_root):
    url, server = http_root
    server.hits.clear()
    first = FS.get_from(f'{url}/a.txt')
    assert Path(first).read_text() == 'hello' and '/a.txt' in server.hits
    server.hits.clear()
    assert FS.get_from(f'{url}/a.txt') == first and server.hits == []
    assert FS.get_object(f'{url}/a.txt') == b'hello'


def test_http_queries_listing_and_directory_download(http_root):
    url, _ = http_root
    assert FS.exists(f'{url}/a.txt') and FS.isfile(f'{url}/a.txt') and not FS.exists(f'{url}/nope.txt')
    assert FS.isdir(f'{url}/d/')
    assert FS.walk_dir(f'{url}/d/') == [f'{url}/d/one.txt', f'{url}/d/sub/two.txt']
    local = Path(FS.get_dir_to_local_dir(f'{url}/d/'))
    assert (local / 'one.txt').read_text() == 'one' and (local / 'sub' / 'two.txt').read_text() == 'two'


def test_http_missing_file_names_the_url(http_root):
    url, _ = http_root
    with pytest.raises(FileNotAvailable, match=rf"^'{url}/nope.txt' does not exist$"):
        FS.get_from(f'{url}/nope.txt')


# ---- hub mirrors -------------------------------------------------------------------------------

@pytest.mark.parametrize('uri, rel', [
    ('ms://AI-ModelScope/stable-diffusion-v1-5@v1-5-pruned-emaonly.safetensors',
     'ms/AI-ModelScope/stable-diffusion-v1-5/v1-5-pruned-emaonly.safetensors'),
    ('hf://openai/clip-vit-large-patch14@tokenizer/vocab.json', 'hf/openai/clip-vit-large-patch14/tokenizer/vocab.json'),
])
def test_hub_uris_resolve_inside_the_mirror(uri, rel):
    expected = Path(os.environ['SCEPTER_MIRROR']) / rel
    with pytest.raises(FileNotAvailable) as info:
        FS.get_from(uri)
    assert str(info.value) == (f"'{uri}' is not available offline: place it at '{expected}' "
                               f"(mirror root: SCEPTER_MIRROR={os.environ['SCEPTER_MIRROR']})")
    assert not FS.exists(uri)
    expected.parent.mkdir(parents=True)
    expected.write_bytes(b'weights')
    assert FS.get_from(uri) == str(expected) and FS.get_object(uri) == b'weights' and FS.isfile(uri)


def test_hub_repo_directory(tmp_path):
    repo = Path(os.environ['SCEPTER_MIRROR']) / 'ms' / 'AI-ModelScope' / 'clip-vit-large-patch14'
    (repo / 'tokenizer').mkdir(parents=True)
    (repo / 'tokenizer' / 'vocab.json').write_text('{}')
    with FS.get_dir_to_local_dir('ms://AI-ModelScope/clip-vit-large-patch14', wait_finish=True) as local:
        assert Path(local) == repo
    assert FS.walk_dir('ms://AI-ModelScope/clip-vit-large-patch14@tokenizer') == [str(repo / 'tokenizer' / 'vocab.json')]


def test_local_path_is_the_one_resolution_of_paths_and_uris(tmp_path, monkeypatch):
    from scepter_core.fs import is_uri
    monkeypatch.setenv('HOME', str(tmp_path))
    assert not is_uri('/a/b') and not is_uri('~/b') and is_uri('ms://o/r@f') and is_uri('file:///a')
    assert FS.local_path('~/not/there.bin') == tmp_path / 'not' / 'there.bin'  # plain paths: not checked
    assert FS.local_path(tmp_path / 'y') == tmp_path / 'y'
    with pytest.raises(FileNotAvailable, match='is not available offline: place it at'):
        FS.local_path('ms://o/r@w.safetensors')  # a URI must resolve, and says where to place it
    target = Path(os.environ['SCEPTER_MIRROR']) / 'ms' / 'o' / 'r' / 'w.safetensors'
    target.parent.mkdir(parents=True)
    target.write_bytes(b'w')
    assert FS.local_path('ms://o/r@w.safetensors') == target
    assert FS.local_path(f'file://{target}') == target

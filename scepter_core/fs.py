"""FS: one file API over fsspec with a local cache, plus offline hub mirrors.

`ms://ORG/REPO@PATH` and `hf://ORG/REPO@PATH` never touch the network: they resolve
inside `SCEPTER_MIRROR` (default `~/.cache/scepter/mirror`) as `ms/ORG/REPO/PATH`
and `hf/ORG/REPO/PATH`."""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .base import BaseObject
from .errors import ScepterError
from .registry import FILE_SYSTEMS

HUB_PREFIXES = {'ms://': 'ms', 'modelscope://': 'ms', 'hf://': 'hf', 'huggingface://': 'hf'}


class FileNotAvailable(ScepterError, FileNotFoundError):
    pass


class LocalPath(str):
    """A local path that can also be used as `with FS.get_from(p) as local:`."""

    def __enter__(self) -> str:
        return str(self)

    def __exit__(self, *exc) -> None:
        return None


def cache_dir() -> Path:
    return Path(os.environ.get('SCEPTER_CACHE', Path.home() / '.cache' / 'scepter'))


def mirror_dir() -> Path:
    return Path(os.environ.get('SCEPTER_MIRROR', cache_dir() / 'mirror'))


def is_uri(path: str | os.PathLike) -> bool:
    """True for `PROTOCOL://...` (hub, remote or file URIs), False for plain local paths."""
    return '://' in str(path)


def _protocol(path: str) -> str:
    return path.split('://', 1)[0] if is_uri(path) else 'file'


def _file_mode(path: str) -> int:
    """The mode a file written at `path` should get: the old file's, else 0666 less the umask."""
    if os.path.exists(path):
        return os.stat(path).st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


class FileSystem:
    """The process-wide file API (`FS`)."""

    def __init__(self) -> None:
        self.temp_dir: Path | None = None

    # ---- resolution ---------------------------------------------------------------
    def hub_to_local(self, path: str) -> str | None:
        """The mirror path for a hub URI, or None if `path` is not one."""
        for prefix, sub in HUB_PREFIXES.items():
            if path.startswith(prefix):
                repo, _, inner = path[len(prefix):].partition('@')
                return str(mirror_dir() / sub / repo.strip('/') / inner.strip('/'))
        return None

    def _fs(self, path: str):
        import fsspec
        return fsspec.core.url_to_fs(path)

    def _cache_path(self, path: str) -> Path:
        base = Path(self.temp_dir) if self.temp_dir else cache_dir() / 'files'
        digest = hashlib.sha1(path.encode()).hexdigest()[:16]
        return base / digest / (Path(path.split('://', 1)[-1]).name or 'data')

    def local_or_none(self, path: str) -> str | None:
        mirrored = self.hub_to_local(path)
        if mirrored is not None:
            return mirrored
        if _protocol(path) == 'file':
            return path[len('file://'):] if path.startswith('file://') else path
        return None

    def local_path(self, path: str | os.PathLike) -> Path:
        """Where `path` is on this machine: a plain path as given (`~` expanded), a hub URI in
        its mirror, any other URI fetched into the cache. A URI that cannot be had raises
        FileNotAvailable (naming where to place a hub file); a plain path is not checked."""
        return Path(self.get_from(str(path))) if is_uri(path) else Path(path).expanduser()

    # ---- reading -------------------------------------------------------------------
    def get_from(self, path: str, local_path: str | None = None, wait_finish: bool = True) -> LocalPath:
        """A local copy of `path` (downloaded once into the cache for remote protocols)."""
        path = str(path)
        local = self.local_or_none(path)
        if local is not None:
            if not os.path.exists(local):
                raise FileNotAvailable(self._missing_message(path, local))
            return LocalPath(local)
        target = Path(local_path) if local_path else self._cache_path(path)
        if not target.exists():
            fs, rpath = self._fs(path)
            if not fs.exists(rpath):
                raise FileNotAvailable(f"'{path}' does not exist")
            self._download(fs, rpath, target)
        return LocalPath(str(target))

    @staticmethod
    def _download(fs, rpath: str, target: Path) -> None:
        """Fetch into a temporary sibling, then rename: a reader never sees half a file."""
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + f'.part{os.getpid()}')
        try:
            if fs.isdir(rpath):  # file by file: fsspec's recursive `get` differs per protocol
                root = rpath.rstrip('/')
                for remote in fs.find(root):
                    local = tmp / remote[len(root):].lstrip('/')
                    local.parent.mkdir(parents=True, exist_ok=True)
                    fs.get_file(remote, str(local))
            else:
                fs.get(rpath, str(tmp))
            os.replace(tmp, target)
        except OSError:
            if not target.exists():  # another process finishing first is fine
                raise
        finally:
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            elif tmp.exists():
                tmp.unlink()

    def get_dir_to_local_dir(self, path: str, wait_finish: bool = True, **_) -> LocalPath:
        """A local directory holding the content of `path` (Scepter's name)."""
        return self.get_from(path, wait_finish=wait_finish)

    def _missing_message(self, path: str, local: str) -> str:
        if self.hub_to_local(path) is not None:
            return (f"'{path}' is not available offline: place it at '{local}' "
                    f"(mirror root: SCEPTER_MIRROR={mirror_dir()})")
        return f"file not found: '{path}'"

    def get_object(self, path: str) -> bytes:
        local = self.local_or_none(str(path))
        if local is not None:
            if not os.path.isfile(local):
                raise FileNotAvailable(self._missing_message(str(path), local))
            return Path(local).read_bytes()
        fs, rpath = self._fs(str(path))
        with fs.open(rpath, 'rb') as f:
            return f.read()

    # ---- writing -------------------------------------------------------------------
    def put_object(self, data: bytes, path: str) -> None:
        with self.put_to(path) as local:
            Path(local).write_bytes(data)

    @contextlib.contextmanager
    def put_to(self, path: str) -> Iterator[str]:
        """Yield a local temporary path; on success it replaces `path` atomically
        (local) or is uploaded (remote). On error nothing at `path` changes."""
        path = str(path)
        local = self.local_or_none(path)
        parent = Path(local).parent if local else None
        if parent:
            parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix='.tmp-', suffix=Path(path).suffix, dir=parent)
        os.close(fd)
        try:
            yield tmp
            if local:
                with open(tmp, 'rb') as f:
                    os.fsync(f.fileno())
                os.chmod(tmp, _file_mode(local))  # mkstemp makes 0600 files
                os.replace(tmp, local)
            else:
                fs, rpath = self._fs(path)
                fs.put(tmp, rpath)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    # ---- queries -------------------------------------------------------------------
    def exists(self, path: str) -> bool:
        local = self.local_or_none(str(path))
        if local is not None:
            return os.path.exists(local)
        fs, rpath = self._fs(str(path))
        return fs.exists(rpath)

    def isfile(self, path: str) -> bool:
        local = self.local_or_none(str(path))
        if local is not None:
            return os.path.isfile(local)
        fs, rpath = self._fs(str(path))
        return fs.isfile(rpath)

    def isdir(self, path: str) -> bool:
        local = self.local_or_none(str(path))
        if local is not None:
            return os.path.isdir(local)
        fs, rpath = self._fs(str(path))
        return fs.isdir(rpath)

    def walk_dir(self, path: str, recurse: bool = True) -> list[str]:
        """Files below `path`, sorted (full paths in the same protocol)."""
        path = str(path)
        local = self.local_or_none(path)
        if local is not None:
            root = Path(local)
            it = root.rglob('*') if recurse else root.glob('*')
            return sorted(str(p) for p in it if p.is_file())
        fs, rpath = self._fs(path)
        files = fs.find(rpath) if recurse else [p for p in fs.ls(rpath, detail=False) if fs.isfile(p)]
        return sorted(f if '://' in f else fs.unstrip_protocol(f) for f in files)

    def make_dir(self, path: str) -> None:
        local = self.local_or_none(str(path))
        if local is not None:
            Path(local).mkdir(parents=True, exist_ok=True)
        else:
            fs, rpath = self._fs(str(path))
            fs.makedirs(rpath, exist_ok=True)

    def remove(self, path: str) -> None:
        local = self.local_or_none(str(path))
        if local is not None:
            if os.path.isdir(local):
                shutil.rmtree(local)
            elif os.path.exists(local):
                os.remove(local)
        else:
            fs, rpath = self._fs(str(path))
            fs.rm(rpath, recursive=True)

    def init_fs_client(self, cfg=None, logger=None) -> None:
        """Scepter compatibility: a FILE_SYSTEM block only sets the cache directory here."""
        if cfg and cfg.get('TEMP_DIR'):
            self.temp_dir = Path(cfg.TEMP_DIR)


FS = FileSystem()


class _FsConfig(BaseObject):
    """Scepter FILE_SYSTEM blocks: every protocol is served by FS; TEMP_DIR sets its cache."""

    para_dict = {
        'TEMP_DIR': {'value': None, 'type': str, 'description': 'Directory for cached downloads.'},
        'AUTO_CLEAN': {'value': False, 'description': 'Accepted for Scepter recipes; unused.'},
        'RETRY_TIMES': {'value': 10, 'description': 'Accepted for Scepter recipes; unused.'},
    }

    def __init__(self, cfg=None, logger=None):
        super().__init__(cfg, logger)
        FS.init_fs_client(self.cfg)


for _name in ('LocalFs', 'ModelscopeFs', 'HuggingfaceFs', 'HttpFs', 'AliyunOssFs'):
    FILE_SYSTEMS.register_class(_name)(type(_name, (_FsConfig,), {'__doc__': _FsConfig.__doc__}))

"""One training per WORK_DIR: `WORK_DIR/.scepter.lock` holds an exclusive flock and the owner's
PID. The kernel drops the lock when its process dies however it dies, so the lock of a dead
run (SIGKILL, a crash) is simply taken over; a live one makes the second run refuse."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from pathlib import Path
from typing import Iterator

from ..errors import ScepterError

LOCK_NAME = '.scepter.lock'


class WorkDirLocked(ScepterError):
    """Another process trains in this WORK_DIR."""


def _owner(path: Path) -> str:
    try:
        return path.read_text(encoding='utf-8', errors='replace').strip() or 'unknown'
    except OSError:
        return 'unknown'


@contextlib.contextmanager
def work_dir_lock(work_dir: str | os.PathLike) -> Iterator[Path]:
    """Hold WORK_DIR's lock for the duration; raises WorkDirLocked naming the other PID."""
    path = Path(work_dir) / LOCK_NAME
    try:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise ScepterError(f"cannot write in WORK_DIR '{work_dir}': {e.strerror or e}") from e
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise ScepterError(f"cannot lock WORK_DIR '{work_dir}': {e.strerror or e}") from e
            raise WorkDirLocked(f"WORK_DIR '{work_dir}' is in use by another training ({_owner(path)}): wait for "
                                f"it to end, or train in another --work-dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, f'PID {os.getpid()}, since {time.strftime("%Y-%m-%d %H:%M:%S")}\n'.encode())
        yield path
    finally:
        os.close(fd)  # releases the flock; the file stays (its PID is only read under a held lock)

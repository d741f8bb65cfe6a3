"""Facts about this process among the run's processes, for the launchers (launch.py) and the
Lightning runner alike: below both, so that neither imports the other for them."""
from __future__ import annotations

import os
import signal
import sys


def is_first_process() -> bool:
    """False in workers of rank > 0 that torchrun or Lightning started (each runs the whole
    command) and on spawn nodes other than node 0: run-level files such as
    WORK_DIR/config.yaml are written once."""
    return int(os.environ.get('LOCAL_RANK', 0)) == 0 and int(os.environ.get('RANK', 0)) == 0


def die_with_parent() -> None:
    """SIGKILL this worker when the launching process dies, however it dies (Linux), so a
    killed job never leaves workers behind."""
    if sys.platform.startswith('linux'):
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG

"""SIGINT / SIGTERM during training (Ctrl-C, a scheduler's preemption): the first signal lets
the current optimizer step finish, then the solver writes a checkpoint and stops with exit
code 128 + signal (130 / 143); a second signal exits at once. Under several processes the
ranks agree at each step end, so all of them stop after the same step."""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from types import FrameType
from typing import Any

from ..env import we
from ..errors import ScepterError

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(ScepterError):
    """Training stopped on a signal; the exit code is 128 + the signal's number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + int(signum)


class StopRequest:
    """While entered (in the main thread), SIGINT and SIGTERM only note that a stop was asked."""

    def __init__(self, logger: logging.Logger):
        self.logger = logger
        self.signum = 0
        self.settled = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.signum:  # stopping: a second signal still exits at once, also while the error prints
            return
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def settle(self) -> None:
        """The stop's checkpoint is written: later signals are ignored, the exit is under way and
        nothing is left to wait for (also after a library put back the handlers it found, as
        Lightning does when fit ends)."""
        self.settled = True
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                signal.signal(s, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.settled:
            return
        if self.signum:  # the second one: no waiting for the step or the checkpoint
            sys.stderr.write(f'error: {name} again: stopped at once, without a checkpoint of this step\n')
            sys.stderr.flush()
            os._exit(128 + signum)
        self.signum = signum
        if we.is_main:  # one line for the run, not one per rank
            self.logger.warning(f'{name}: finishing this step, then writing a checkpoint '
                                f'(send {name} again to stop at once)')

    def requested(self) -> int:
        """The signal that asked to stop (0: none); the same on every rank."""
        if not we.is_distributed:
            return self.signum
        from ..dist import max_over_ranks
        return int(max_over_ranks(self.signum))

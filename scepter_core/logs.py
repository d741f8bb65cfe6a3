"""Logging set-up for a run: console on rank 0, a log file in WORK_DIR."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

FORMAT = '%(asctime)s %(levelname).1s %(message)s'


def setup_logging(work_dir: str | None, log_file: str | None, rank: int = 0,
                  level: int = logging.INFO) -> logging.Logger:
    """The 'scepter' logger: INFO to stderr on rank 0 (warnings elsewhere) and, on rank 0,
    to WORK_DIR/LOG_FILE. Calling it again replaces the handlers it added."""
    logger = logging.getLogger('scepter')
    logger.setLevel(level)
    for h in [h for h in logger.handlers if getattr(h, '_scepter', False)]:
        logger.removeHandler(h)
        h.close()
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    handlers[0].setLevel(level if rank == 0 else logging.WARNING)
    if rank == 0 and work_dir and log_file:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(Path(work_dir) / log_file))
    for h in handlers:
        h.setFormatter(logging.Formatter(FORMAT if rank == 0 else f'[rank {rank}] ' + FORMAT, '%H:%M:%S'))
        h._scepter = True
        logger.addHandler(h)
    return logger

"""The one place the core draws progress bars (Rich), so the library never
talks to a console directly. Disabled bars cost nothing."""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Callable, Iterator

# Imported eagerly on purpose: importing rich.progress in the middle of a training run was
# seen to change CPU float results bit-wise (so a resumed run would no longer match).
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)


def progress_enabled() -> bool:
    return os.environ.get('SCEPTER_PROGRESS', '1') != '0'


@contextlib.contextmanager
def progress_bar(total: int | None, description: str, enabled: bool = True) -> Iterator[Callable[..., None]]:
    """Yield `advance(n=1, **fields)`; fields show after the bar (e.g. loss=0.12)."""
    if not (enabled and progress_enabled()):
        yield lambda n=1, **fields: None
        return
    console = Console(file=sys.stderr)
    columns = [TextColumn('[bold]{task.description}'), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn('eta'), TimeRemainingColumn(), TextColumn('{task.fields[info]}')]
    with Progress(*columns, console=console, transient=False,
                  disable=not console.is_terminal and os.environ.get('SCEPTER_PROGRESS') != 'force') as prog:
        task = prog.add_task(description, total=total, info='')

        def advance(n: int = 1, **fields: object) -> None:
            info = '  '.join(f'{k} {v:.4g}' if isinstance(v, float) else f'{k} {v}' for k, v in fields.items())
            prog.update(task, advance=n, info=info)
        yield advance

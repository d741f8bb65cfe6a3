"""Prints the attack corpus' summary line after the run (see harness.py)."""
from __future__ import annotations

from harness import RESULTS


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if RESULTS:
        terminalreporter.write_line(
            f'attack: {len(RESULTS)} cases, {sum(r.traceback for r in RESULTS)} tracebacks, '
            f'{sum(r.lost for r in RESULTS)} lost, {sum(r.executed for r in RESULTS)} executed')

"""Wall time of `scepter --help` (must stay quick: no torch import) and `scepter registry list`
(imports every built-in package). Not a test: timings depend on the machine.

    python bench/cli_startup.py [--runs 5]

Also reports each command's CPU time (user + system of the child), which a busy shared
machine disturbs less than wall time. Targets (issue 7): --help < 0.3 s, registry list < 3 s.
Writes bench/results/cli_startup.json.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

from common import report

COMMANDS = {('--help',): 0.3, ('registry', 'list'): 3.0}


def time_command(exe: list[str], args: tuple[str, ...], runs: int) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds per run, after one untimed warm-up run (file-system caches)."""
    subprocess.run(exe + list(args), capture_output=True, check=True)
    wall, cpu = [], []
    for _ in range(runs):
        before = os.times()
        start = time.perf_counter()
        subprocess.run(exe + list(args), capture_output=True, check=True)
        wall.append(time.perf_counter() - start)
        after = os.times()
        cpu.append(after.children_user + after.children_system - before.children_user - before.children_system)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--runs', type=int, default=5)
    args = parser.parse_args()
    script = shutil.which('scepter')
    exe = [script] if script else [sys.executable, '-m', 'scepter_cli']
    rows = []
    for cmd, target in COMMANDS.items():
        wall, cpu = time_command(exe, cmd, args.runs)
        rows.append(['scepter ' + ' '.join(cmd), min(wall), statistics.median(wall), statistics.median(cpu), target,
                     'yes' if statistics.median(wall) < target else 'no'])
    report('cli_startup', f"CLI start-up via {' '.join(exe)} ({args.runs} runs each, after one warm-up)",
           ['command', 'min s', 'median s', 'CPU s (median)', 'target s', 'met'], rows)


if __name__ == '__main__':
    main()

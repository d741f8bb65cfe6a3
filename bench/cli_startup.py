"""Wall time of `scepter --help` (must stay quick: no torch import) and `scepter registry list`
(imports every built-in package). Not a test: timings depend on the machine.

    python bench/cli_startup.py [--runs 5]
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time

COMMANDS = (['--help'], ['registry', 'list'])


def time_command(exe: list[str], args: list[str], runs: int) -> list[float]:
    """Seconds per run, after one untimed warm-up run (file-system caches)."""
    subprocess.run(exe + args, capture_output=True, check=True)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(exe + args, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--runs', type=int, default=5)
    args = parser.parse_args()
    script = shutil.which('scepter')
    exe = [script] if script else [sys.executable, '-m', 'scepter_cli']
    print(f"command via: {' '.join(exe)}  ({args.runs} runs each, after one warm-up)")
    print(f"{'command':<28}{'min s':>8}{'median s':>10}{'max s':>8}")
    for cmd in COMMANDS:
        t = time_command(exe, cmd, args.runs)
        label = 'scepter ' + ' '.join(cmd)
        print(f'{label:<28}{min(t):>8.2f}{statistics.median(t):>10.2f}{max(t):>8.2f}')


if __name__ == '__main__':
    main()

"""The attack corpus' one way to run a case and judge it.

Every case runs the real `scepter` command in a fresh process and is judged on the same four
counts, summed by tests/conftest.py into one line: `attack: N cases, T tracebacks, L lost, E
executed` (each case is appended to the run's tally file, so the line also sums the cases of
every pytest-xdist worker).
- traceback: a Python traceback printed without `--debug`;
- lost: what existed before (a checkpoint, a dataset) no longer loads after the attack;
- executed: code from an attacker's file ran (a canary file appeared);
- and the error itself must be one `error:` line naming the key, file or value.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterable

ROOT = Path(__file__).resolve().parents[2]


@dataclasses.dataclass
class Outcome:
    name: str
    rc: int
    traceback: bool
    lost: bool
    executed: bool


RESULTS: list[Outcome] = []


def _tally(outcome: Outcome) -> None:
    path = os.environ.get('SCEPTER_ATTACK_TALLY')
    if path:
        with open(path, 'a') as f:
            f.write(json.dumps(dataclasses.asdict(outcome)) + '\n')


def canary(folder: Path, name: str = 'payload') -> tuple[str, Path]:
    """Python source that leaves a file behind when it runs, and that file's path."""
    marker = folder / f'{name}.ran'
    return f'open({str(marker)!r}, "w").write("ran")\n', marker


def cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 300,
        stdin: str | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, 'HF_HUB_OFFLINE': '1', 'PYTHONPATH': str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, '-m', 'scepter_cli', *args], cwd=cwd or ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout, input=stdin)


# Runs several argv lists through scepter_cli.main.main in one fresh process (torch is imported
# once, not per case); what escapes main() is printed as a traceback, which judge() counts.
_DRIVER = """
import contextlib, io, json, sys, traceback
from scepter_cli.main import main
results = []
for argv in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except BaseException:
            traceback.print_exc()
            code = -1
    results.append({'code': code, 'out': out.getvalue(), 'err': err.getvalue()})
print(json.dumps(results))
"""


def cli_many(argvs: list[list[str]], cwd: Path | None = None, env: dict | None = None,
             timeout: int = 600) -> list[subprocess.CompletedProcess]:
    """`cli` for many cases that share one process (cases that cannot leave state behind)."""
    import json
    full_env = {**os.environ, 'HF_HUB_OFFLINE': '1', 'PYTHONPATH': str(ROOT), 'COLUMNS': '300', **(env or {})}
    proc = subprocess.run([sys.executable, '-c', _DRIVER, json.dumps(argvs)], cwd=cwd or ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.splitlines()[-1])
    return [subprocess.CompletedProcess(a, r['code'], r['out'], r['err']) for a, r in zip(argvs, results)]


def judge(name: str, proc: subprocess.CompletedProcess, *, names: Iterable[str] = (),
          codes: Iterable[int] = (1, 2), markers: Iterable[Path] = (),
          intact: Callable[[], bool] | None = None, error: bool = True) -> str:
    """Record one case and assert it was refused cleanly; returns the error line ('' if none)."""
    text = proc.stdout + proc.stderr
    outcome = Outcome(name, proc.returncode, 'Traceback (most recent call last)' in text,
                      intact is not None and not intact(), any(Path(m).exists() for m in markers))
    RESULTS.append(outcome)
    _tally(outcome)
    assert not outcome.traceback, f'{name}: traceback without --debug\n{text[-3000:]}'
    assert not outcome.executed, f'{name}: code from the attacker ran'
    assert not outcome.lost, f'{name}: what existed before was lost'
    if not error:
        return ''
    assert proc.returncode in tuple(codes), f'{name}: exit {proc.returncode}\n{text[-3000:]}'
    lines = [ln for ln in proc.stderr.splitlines() if ln.lower().startswith('error:')]  # ours, or click's usage 'Error:'
    assert len(lines) == 1, f'{name}: expected one error line\n{proc.stderr[-3000:]}'
    for want in names:
        assert want in lines[0], f'{name}: {want!r} not named in {lines[0]!r}'
    return lines[0]

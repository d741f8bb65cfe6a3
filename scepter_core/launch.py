"""Launchers. Every worker runs `fn(cfg)` (by default `run_worker`: build cfg.SOLVER, solve)
inside a torch.distributed process group whenever there is more than one process.

- `spawn` (default): this command starts its node's workers with torch.multiprocessing,
  one per visible GPU, or ENV.NUM_PROCESSES on CPU. Several nodes as in Scepter: run the
  same command on every node with RANK = node rank, WORLD_SIZE = node count and
  MASTER_ADDR / MASTER_PORT = node 0's address and a free port.
- `torchrun`: torchrun started the workers and set RANK, LOCAL_RANK, WORLD_SIZE,
  MASTER_ADDR and MASTER_PORT; without them the command runs as one process.
- ENV.USE_PL: a Lightning Trainer runs the solver (lightning_runner.py).

The top of the process layers: launch -> worker (build and run the solver), dist (the
process group), env. Wrapping a model in DDP/FSDP is parallel.py's, called by the solver.

A failing worker ends the job: the spawn parent stops the other workers and raises an
error naming the failing rank; under torchrun the worker names its rank and torchrun
stops the others."""
from __future__ import annotations

import functools
import json
import os
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from .config import Config
from .dist import init_process_group, leave_process_group, uses_cuda
from .errors import ConfigError, ScepterError
from .imports import LOADED, import_user_code
from .processes import die_with_parent
from .solvers.interrupt import Interrupted
from .worker import run_worker

TORCHRUN_VARS = ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT')
# Errors a worker raises only because another worker went away first.
_KNOCK_ON = ('Connection closed by peer', 'Connection reset by peer', 'Broken pipe', 'DistNetworkError')


class WorkerError(ScepterError):
    """A worker failed; the message names its rank. Keeps the exit code of the original error."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


# ---- one worker in its group -----------------------------------------------------------------
def _env_block(cfg: Config) -> Config:
    return cfg.get('ENV') or Config()


def _run_in_group(cfg: Config, fn: Callable[[Config], Any]) -> Any:
    init_process_group(_env_block(cfg))
    ok = False
    try:
        out = fn(cfg)
        ok = True
        return out
    except Interrupted:
        ok = True  # every rank stopped after the same step: they leave together
        raise
    finally:
        leave_process_group(ok)


# ---- torchrun -------------------------------------------------------------------------------
def under_torchrun() -> bool:
    return 'TORCHELASTIC_RUN_ID' in os.environ


def _run_torchrun(cfg: Config, fn: Callable[[Config], Any]) -> Any:
    if int(os.environ.get('WORLD_SIZE', '1')) <= 1:  # `--launcher torchrun` alone: one process
        return fn(cfg)
    missing = [k for k in TORCHRUN_VARS if k not in os.environ]
    if missing:
        raise ConfigError(f"ENV.LAUNCHER torchrun: {', '.join(missing)} not set; start the command with "
                          f"torchrun (torchrun --nproc_per_node N -m scepter_cli train --cfg ... --launcher torchrun)")
    os.environ.setdefault('LOCAL_RANK', os.environ['RANK'])
    try:
        return _run_in_group(cfg, fn)
    except Exception as e:
        rank = os.environ['RANK']
        raise WorkerError(f'rank {rank}: {_describe(e)}', getattr(e, 'exit_code', 1)) from e


def _describe(e: BaseException) -> str:
    return str(e) if isinstance(e, ScepterError) else f'{type(e).__name__}: {e}'


# ---- spawn ------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _spawned(local_rank: int, cfg: Config, fn: Callable[[Config], Any], nprocs: int, node_rank: int,
             nnodes: int, report_dir: str, user_code: list[str]) -> None:
    die_with_parent()
    if hasattr(os, 'setpgrp'):  # Ctrl-C reaches the launcher alone, which passes it on once
        os.setpgrp()
    rank = node_rank * nprocs + local_rank
    os.environ.update({'LOCAL_RANK': str(local_rank), 'RANK': str(rank), 'WORLD_SIZE': str(nprocs * nnodes),
                       'LOCAL_WORLD_SIZE': str(nprocs), 'GROUP_RANK': str(node_rank)})
    if not uses_cuda(_env_block(cfg)) and 'OMP_NUM_THREADS' not in os.environ:
        from .data.loader import usable_cores  # CPU workers share the cores instead of each taking all
        torch.set_num_threads(max(1, usable_cores() // nprocs))
    try:
        import_user_code(user_code)  # classes the parent registered through --import / IMPORTS
        _run_in_group(cfg, fn)
    except Interrupted as e:  # a clean stop, reported by the launcher: an error would stop the other ranks
        _write_report(report_dir, local_rank, e, interrupted=True)
    except Exception as e:
        _write_report(report_dir, local_rank, e)
        raise


def _write_report(report_dir: str, local_rank: int, e: BaseException, interrupted: bool = False) -> None:
    report = {'message': _describe(e), 'exit_code': getattr(e, 'exit_code', 1), 'time': time.time(),
              'interrupted': interrupted}
    (Path(report_dir) / f'rank-{local_rank}.json').write_text(json.dumps(report))


def _interrupted(report_dir: Path) -> Interrupted | None:
    """The stop on a signal that the workers reported (the lowest rank's words), if they did."""
    for path in sorted(report_dir.glob('rank-*.json'), key=lambda p: int(p.stem.split('-')[1])):
        report = json.loads(path.read_text())
        if report.get('interrupted'):
            return Interrupted(report['message'], int(report['exit_code']) - 128)
    return None


def _root_cause(context: Any, report_dir: Path, first: int) -> tuple[int, str, int]:
    """(local rank, message, exit code) of the worker that failed first: one killed by a signal
    other than the SIGTERM the launcher sends, else the earliest error that is not a
    consequence of another worker going away, else the one torch reported."""
    reports = {i: json.loads((report_dir / f'rank-{i}.json').read_text())
               for i in range(len(context.processes)) if (report_dir / f'rank-{i}.json').is_file()}
    for i, p in enumerate(context.processes):
        if p.exitcode is not None and p.exitcode < 0 and -p.exitcode != signal.SIGTERM and i not in reports:
            return i, f'died from signal {signal.Signals(-p.exitcode).name}', 1
    causes = sorted((r['time'], i) for i, r in reports.items() if not any(k in r['message'] for k in _KNOCK_ON))
    i = causes[0][1] if causes else first
    if i in reports:
        return i, f"failed: {reports[i]['message']}", int(reports[i]['exit_code'])
    code = context.processes[i].exitcode
    return i, f'exited with code {code}', 1


def _run_spawn(cfg: Config, fn: Callable[[Config], Any]) -> Any:
    env = _env_block(cfg)
    nprocs = torch.cuda.device_count() if uses_cuda(env) else int(env.get('NUM_PROCESSES') or 1)
    nnodes = int(os.environ.get('WORLD_SIZE', 1))  # Scepter's spawn mode: WORLD_SIZE counts nodes,
    node_rank = int(os.environ.get('RANK', 0))     # RANK is this node's rank
    if nprocs * nnodes <= 1:
        return fn(cfg)
    if not 0 <= node_rank < nnodes:
        raise ConfigError(f'spawn launcher: RANK (the node rank) is {node_rank}, but WORLD_SIZE (the node count) '
                          f'is {nnodes}')
    if nnodes > 1 and not os.environ.get('MASTER_ADDR'):
        raise ConfigError('spawn launcher on several nodes: set MASTER_ADDR (and MASTER_PORT) to the address '
                          'of node 0 on every node')
    os.environ.setdefault('MASTER_ADDR', '127.0.0.1')
    os.environ.setdefault('MASTER_PORT', str(_free_port()))
    import torch.multiprocessing as mp
    with tempfile.TemporaryDirectory(prefix='scepter-workers-') as report_dir:
        context = mp.start_processes(_spawned, nprocs=nprocs, join=False, start_method='spawn',
                                     args=(cfg, fn, nprocs, node_rank, nnodes, report_dir, list(LOADED)))
        received: list[int] = []
        forward = functools.partial(_forward, context, received)
        previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            while not context.join():
                pass
            stopped = _interrupted(Path(report_dir))
            if stopped is not None:
                raise stopped
        except (mp.ProcessRaisedException, mp.ProcessExitedException) as e:
            i, message, code = _root_cause(context, Path(report_dir), e.error_index)
            raise WorkerError(f'worker rank {node_rank * nprocs + i} {message}; the other workers were stopped',
                              code) from e
        finally:
            for s, handler in previous.items():  # stopping on a signal: the workers are done, a late one is ignored
                signal.signal(s, signal.SIG_IGN if received else handler)
    return None


def _forward(context: Any, received: list[int], signum: int, frame: Any) -> None:
    """SIGINT / SIGTERM to the launcher: to every worker (they stop after the same step). A
    second one stops the workers and the launcher at once, with one line."""
    received.append(signum)
    again = len(received) > 1
    for p in context.processes:
        if p.is_alive():
            os.kill(p.pid, signal.SIGKILL if again else signum)
    if again:
        sys.stderr.write(f'error: {signal.Signals(signum).name} again: stopped at once, without a checkpoint '
                         f'of this step\n')
        sys.stderr.flush()
        os._exit(128 + signum)


# ---- entry ----------------------------------------------------------------------------------------
def launch(cfg: Config, mode: str = 'train', fn: Callable[[Config], Any] | None = None) -> Any:
    """Start the workers cfg.ENV asks for and run `fn(cfg)` in each (default: build
    cfg.SOLVER and solve in `mode`). Returns fn's result when it ran in this process."""
    env = _env_block(cfg)
    if env.get('USE_PL') and mode == 'train' and fn is None:
        from .lightning_runner import run_lightning
        return run_lightning(cfg)
    fn = fn or functools.partial(run_worker, mode=mode)
    if env.get('LAUNCHER') == 'torchrun' or under_torchrun():
        return _run_torchrun(cfg, fn)
    return _run_spawn(cfg, fn)


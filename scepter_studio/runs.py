"""Training runs for the Studio: `scepter train` in its own process group (the UI outlives
it), stopped with SIGINT (then SIGTERM), resumed with `--resume latest`; records on disk."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from scepter_core.utils.plot import line_plot

from .paths import IMAGE_SUFFIXES, StudioError

RUN_FILE = 'studio_run.json'
LOG_FILE = 'studio_log.txt'
_NAME = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$')
LOSS_TAGS = ('train/loss', 'loss')


@dataclass
class Run:
    name: str
    recipe: str
    work_dir: str
    overrides: list[str] = field(default_factory=list)
    pid: int | None = None
    state: str = 'new'  # running | finished | failed | stopped
    returncode: int | None = None
    started: float = 0.0

    @property
    def dir(self) -> Path:
        return Path(self.work_dir)


class RunManager:
    """Runs live in `runs_dir/NAME/` (the work dir: checkpoints, probes, TensorBoard events,
    the studio's log and record), so trained models show up in the Generate tab's picker."""

    def __init__(self, runs_dir: Path, stop_timeout: float = 60.0):
        self.runs_dir = runs_dir
        self.stop_timeout = stop_timeout
        self._procs: dict[str, subprocess.Popen] = {}
        # Gradio serves each request on its own thread: a page polling the runs table must not
        # record 'failed' for a run that stop() is ending, nor write the record beside it.
        self._lock = threading.RLock()
        self._stopping: set[str] = set()

    # ---- records -------------------------------------------------------------------------
    def _save(self, run: Run) -> None:
        run.dir.mkdir(parents=True, exist_ok=True)
        tmp = run.dir / f'{RUN_FILE}.{os.getpid()}.{threading.get_ident()}.tmp'
        tmp.write_text(json.dumps(asdict(run), indent=1))
        os.replace(tmp, run.dir / RUN_FILE)

    def get(self, name: str) -> Run:
        return self._refresh(self._load(name))

    def _load(self, name: str) -> Run:
        file = self.runs_dir / name / RUN_FILE
        if not _NAME.match(name or '') or not file.is_file():
            raise StudioError(f"run '{name}': no such run in {self.runs_dir}")
        return Run(**json.loads(file.read_text()))

    def list(self) -> list[Run]:
        if not self.runs_dir.is_dir():
            return []
        names = sorted(p.parent.name for p in self.runs_dir.glob(f'*/{RUN_FILE}'))
        return sorted((self.get(n) for n in names), key=lambda r: -r.started)

    def _refresh(self, run: Run) -> Run:
        """Update a running record from its process (ours, or one a previous Studio started)."""
        if run.state != 'running':
            return run
        with self._lock:
            run = self._load(run.name)  # as it is now: another request may have ended it meanwhile
            if run.state != 'running' or run.name in self._stopping:  # stop() records how it ended
                return run
            proc = self._procs.get(run.name)
            if proc is not None:
                rc = proc.poll()
                if rc is None:
                    return run
            elif run.pid and _alive(run.pid):
                return run
            else:
                rc = None  # started by an earlier Studio and gone: its exit status is unknown
            run.returncode = rc
            run.state = 'finished' if rc == 0 else 'failed'
            self._procs.pop(run.name, None)
            self._save(run)
        return run

    # ---- processes -----------------------------------------------------------------------
    def start(self, name: str, recipe: Path, overrides: list[str] = (), resume: bool = False) -> Run:
        if not _NAME.match(name or ''):
            raise StudioError(f"run name '{name}': use letters, digits, '_', '-', '.' (at most 64)")
        if resume:
            run = self.get(name)
            if run.state == 'running':
                raise StudioError(f"run '{name}' is running already")
        else:
            if (self.runs_dir / name / RUN_FILE).exists():
                raise StudioError(f"run '{name}' exists: resume it or pick another name")
            run = Run(name=name, recipe=str(recipe), work_dir=str(self.runs_dir / name), overrides=list(overrides))
        run.dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, '-m', 'scepter_cli', 'train', '--cfg', run.recipe, '--work-dir', run.work_dir]
        for item in run.overrides:
            cmd += ['--set', item]
        if resume:
            cmd += ['--resume', 'latest']
        log = open(run.dir / LOG_FILE, 'ab')
        log.write(f'\n$ {" ".join(cmd)}\n'.encode())
        log.flush()
        env = {**os.environ, 'SCEPTER_PROGRESS': '0', 'PYTHONUNBUFFERED': '1'}
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)  # its own group: stop reaches the workers it spawns
        log.close()
        self._procs[name] = proc
        run.pid, run.state, run.returncode, run.started = proc.pid, 'running', None, time.time()
        self._save(run)
        return run

    def stop(self, name: str) -> Run:
        """SIGINT to the run's process group, SIGTERM after stop_timeout, SIGKILL after as long
        again. Checkpoints are written atomically, so the last one stays loadable."""
        with self._lock:
            run = self.get(name)
            if run.state != 'running' or not run.pid:
                raise StudioError(f"run '{name}' is not running ({run.state})")
            if name in self._stopping:
                raise StudioError(f"run '{name}' is being stopped already")
            self._stopping.add(name)
        try:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(run.pid, sig)
                except ProcessLookupError:
                    break
                if self._wait(run, self.stop_timeout):
                    break
            with self._lock:
                run.state, run.returncode = 'stopped', self._returncode(run)
                self._procs.pop(name, None)
                self._save(run)
        finally:
            self._stopping.discard(name)
        return run

    def _wait(self, run: Run, timeout: float) -> bool:
        proc = self._procs.get(run.name)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if (proc.poll() is not None) if proc is not None else not _alive(run.pid):
                return True
            time.sleep(0.2)
        return False

    def _returncode(self, run: Run) -> int | None:
        proc = self._procs.get(run.name)
        return proc.poll() if proc is not None else None

    # ---- what a run shows ----------------------------------------------------------------
    def log_tail(self, name: str, lines: int = 40) -> str:
        file = self.get(name).dir / LOG_FILE
        if not file.is_file():
            return ''
        with open(file, 'rb') as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 64 * 1024))
            return '\n'.join(f.read().decode(errors='replace').splitlines()[-lines:])

    def loss_points(self, name: str) -> list[tuple[int, float]]:
        """(step, loss) from the run's TensorBoard event files."""
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
        points: dict[int, float] = {}
        for events in sorted((self.get(name).dir / 'tensorboard').glob('**/events.out.tfevents.*')):
            acc = EventAccumulator(str(events), size_guidance={'scalars': 0})
            acc.Reload()
            tag = next((t for t in LOSS_TAGS if t in acc.Tags().get('scalars', [])), None)
            for ev in acc.Scalars(tag) if tag else []:
                points[ev.step] = ev.value  # a resumed run's later file wins
        return sorted(points.items())

    def loss_curve(self, name: str) -> Path | None:
        """A PNG of the loss curve (None until two points are logged)."""
        points = self.loss_points(name)
        if len(points) < 2:
            return None
        return line_plot([s for s, _ in points], [v for _, v in points], self.get(name).dir / 'studio_loss.png',
                         title=f'{name}: training loss (TensorBoard)', xlabel='step', smooth=5)

    def probe_grids(self, name: str) -> list[Path]:
        """The probe grids written so far, oldest first."""
        probe = self.get(name).dir / 'probe'
        return sorted(p for p in probe.glob('step-*/grid*') if p.suffix.lower() in IMAGE_SUFFIXES)


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

"""The Studio's run records under concurrent requests: Gradio serves each on its own thread, so
the runs table is polled while a stop is under way."""
from __future__ import annotations

import threading
import time
from pathlib import Path

from e2e.conftest import write_recipe
from scepter_studio.runs import RUN_FILE, RunManager

from .conftest import studio_recipe


def test_polling_while_a_run_stops_sees_running_then_stopped_only(tmp_path: Path):
    runs = RunManager(tmp_path / 'runs', stop_timeout=120)
    recipe = write_recipe(tmp_path / 'tiny.yaml', studio_recipe(tmp_path / 'unused', 100_000))
    run = runs.start('polled', recipe)
    end = time.monotonic() + 300
    while not (run.dir / 'checkpoints').is_dir():  # training, not still starting
        assert runs.get('polled').state == 'running', runs.log_tail('polled')
        assert time.monotonic() < end, 'no checkpoint within 300 s'
        time.sleep(0.2)

    seen: set[str] = set()
    errors: list[BaseException] = []
    stopped = threading.Event()

    def poll() -> None:
        try:
            while not stopped.is_set():
                seen.update(r.state for r in runs.list())
                seen.add(runs.get('polled').state)
        except BaseException as e:  # noqa: BLE001 - reported by the test below
            errors.append(e)

    pollers = [threading.Thread(target=poll) for _ in range(3)]
    for t in pollers:
        t.start()
    try:
        final = runs.stop('polled')
    finally:
        stopped.set()
        for t in pollers:
            t.join(30)
    assert not errors, errors
    assert final.state == 'stopped' and final.returncode == 130
    assert seen <= {'running', 'stopped'}, seen  # never 'failed' for a run being stopped
    assert runs.get('polled').state == 'stopped'
    assert sorted(p.name for p in run.dir.glob(f'{RUN_FILE}*')) == [RUN_FILE]  # no temporary left

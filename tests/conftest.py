"""Shared fixtures. Tests never reach a model hub."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
os.environ.setdefault('HF_DATASETS_OFFLINE', '1')
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')

import pytest  # noqa: E402


def pytest_configure(config) -> None:
    if not hasattr(config, 'workerinput'):  # a plain run, or pytest-xdist's controller: its workers inherit it
        fd, path = tempfile.mkstemp(prefix='scepter-attack-', suffix='.jsonl')
        os.close(fd)
        os.environ['SCEPTER_ATTACK_TALLY'] = path
        _probe_once()


PROBE = 'cpu_probe.json'


def _probe_once() -> None:
    """A cache for the session holding the CPU probe (accel/gemm.py) taken once, here, before any
    test loads the machine: each test's own cache starts from a copy. Probed per test, a timing
    taken under another test's (or worker's) load could pick another GEMM path in a run than in
    the run a test compares it with bit for bit."""
    root = tempfile.mkdtemp(prefix='scepter-test-cache-')
    os.environ['SCEPTER_CACHE'] = root
    import torch
    from scepter_core.accel import gemm
    before = torch.get_num_threads()
    for threads in sorted({1, 2, os.cpu_count() or 1}):
        torch.set_num_threads(threads)
        gemm.probe_speedup(threads)
    torch.set_num_threads(before)
    gemm.probe_speedup.cache_clear()


def pytest_unconfigure(config) -> None:
    root = os.environ.get('SCEPTER_CACHE', '')
    if not hasattr(config, 'workerinput') and Path(root).name.startswith('scepter-test-cache-'):
        shutil.rmtree(root, ignore_errors=True)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """The attack corpus' line (tests/attack/harness.py), summed over every worker's cases."""
    path = os.environ.get('SCEPTER_ATTACK_TALLY', '')
    if hasattr(config, 'workerinput') or not os.path.isfile(path):
        return
    with open(path) as f:
        cases = [json.loads(line) for line in f if line.strip()]
    os.remove(path)
    if cases:
        terminalreporter.write_line(
            f"attack: {len(cases)} cases, {sum(c['traceback'] for c in cases)} tracebacks, "
            f"{sum(c['lost'] for c in cases)} lost, {sum(c['executed'] for c in cases)} executed")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Each test gets its own scepter cache and mirror so nothing leaks between tests."""
    root = tmp_path_factory.mktemp('scepter_cache')
    session_probe = Path(os.environ.get('SCEPTER_CACHE', '')) / PROBE
    if session_probe.is_file():
        shutil.copy(session_probe, root / PROBE)
    monkeypatch.setenv('SCEPTER_CACHE', str(root))
    monkeypatch.setenv('SCEPTER_MIRROR', str(root / 'mirror'))
    yield


@pytest.fixture
def temp_registry():
    """`temp_registry(NAME)`: a Registry listed in REGISTRIES (so nested validation and
    templates find it) for the length of one test."""
    from scepter_core.registry import REGISTRIES, Registry
    made: list[str] = []

    def make(name: str) -> Registry:
        REGISTRIES[name] = Registry(name)
        made.append(name)
        return REGISTRIES[name]

    yield make
    for name in made:
        REGISTRIES.pop(name, None)


@pytest.fixture
def one_thread():
    """One torch thread for the test: other test processes share the machine's cores."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

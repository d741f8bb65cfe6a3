"""Shared fixtures. Tests never reach a model hub."""
from __future__ import annotations

import os

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
os.environ.setdefault('HF_DATASETS_OFFLINE', '1')
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Each test gets its own scepter cache and mirror so nothing leaks between tests."""
    root = tmp_path_factory.mktemp('scepter_cache')
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

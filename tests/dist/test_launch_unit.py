"""Launcher decisions that need no second process: backends, misconfigured multi-node
and torchrun environments, and the shard/unshard helpers used for gathering outputs."""
from __future__ import annotations

import pytest

from scepter_core.config import Config
from scepter_core.dist import backend_for, shard, unshard
from scepter_core.errors import ConfigError
from scepter_core.launch import launch


def test_backend_defaults_and_cpu_fallback():
    assert backend_for(Config({'DEVICE': 'cpu'})) == 'gloo'
    assert backend_for(Config({'DEVICE': 'cpu', 'BACKEND': 'nccl'})) == 'gloo'  # nccl needs CUDA
    assert backend_for(Config({'DEVICE': 'cpu', 'BACKEND': 'mpi'})) == 'mpi'


def test_unshard_inverts_the_rank_split():
    items = list(range(7))
    shards = [items[r::3] for r in range(3)]  # what shard() gives ranks 0, 1, 2 of 3
    assert unshard(shards) == items
    assert shard(items) == items  # one process: everything


def _never(cfg):
    raise AssertionError('no worker should start')


@pytest.mark.parametrize('env,match', [
    ({'WORLD_SIZE': '2', 'RANK': '0'}, 'set MASTER_ADDR'),            # two nodes, no rendezvous address
    ({'WORLD_SIZE': '2', 'RANK': '2', 'MASTER_ADDR': 'h'}, 'RANK \\(the node rank\\) is 2'),
])
def test_spawn_multi_node_misconfigurations(monkeypatch, env, match):
    for k in ('MASTER_ADDR', 'MASTER_PORT', 'TORCHELASTIC_RUN_ID'):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError, match=match):
        launch(Config({'ENV': {'DEVICE': 'cpu', 'NUM_PROCESSES': 1}}), fn=_never)


def test_torchrun_without_its_environment(monkeypatch):
    for k in ('RANK', 'MASTER_ADDR', 'MASTER_PORT', 'TORCHELASTIC_RUN_ID', 'WORLD_SIZE'):
        monkeypatch.delenv(k, raising=False)
    cfg = Config({'ENV': {'LAUNCHER': 'torchrun', 'DEVICE': 'cpu'}})
    assert launch(cfg, fn=lambda c: 'ran here') == 'ran here'  # plain `--launcher torchrun`: one process
    monkeypatch.setenv('WORLD_SIZE', '2')
    with pytest.raises(ConfigError, match='RANK, MASTER_ADDR, MASTER_PORT not set'):
        launch(cfg, fn=_never)


def test_spawn_with_one_process_runs_the_function_here(monkeypatch):
    for k in ('RANK', 'WORLD_SIZE', 'TORCHELASTIC_RUN_ID'):
        monkeypatch.delenv(k, raising=False)
    assert launch(Config({'ENV': {'DEVICE': 'cpu', 'NUM_PROCESSES': 1}}), fn=lambda c: c.ENV.DEVICE) == 'cpu'

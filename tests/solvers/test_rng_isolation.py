"""A training run's numbers do not depend on what other threads of the process do: a web
server's thread drawing from `random`'s global stream, or a sampler holding packed weights
(the Studio trains and generates in one process; under pytest-xdist a test's server lives on)."""
from __future__ import annotations

import random
import threading
from pathlib import Path

import torch
from e2e.conftest import tiny_recipe

from scepter_core.accel import packed_weights
from scepter_core.config import Config
from scepter_core.launch import run_worker


def _weights(work: Path) -> dict[str, torch.Tensor]:
    cfg = Config(tiny_recipe(work, 8, TRAIN_HOOKS=[{'NAME': 'BackwardHook'}]))
    assert cfg.SOLVER.MODEL.P_ZERO > 0  # caption dropout draws from a Python stream
    solver = run_worker(cfg, 'train')
    return {k: v.clone() for k, v in solver.unwrapped_model.state_dict().items()}


def test_other_threads_do_not_change_a_training_run(tmp_path: Path):
    alone = _weights(tmp_path / 'alone')
    stop = threading.Event()

    def web_server() -> None:  # as uvicorn / gradio threads may: global draws at any moment
        while not stop.is_set():
            random.random()
            stop.wait(0.001)

    def sampler() -> None:
        with torch.no_grad(), packed_weights():
            stop.wait(600)

    threads = [threading.Thread(target=web_server), threading.Thread(target=sampler)]
    for t in threads:
        t.start()
    try:
        busy = _weights(tmp_path / 'busy')
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert alone.keys() == busy.keys()
    assert [k for k in alone if not torch.equal(alone[k], busy[k])] == []

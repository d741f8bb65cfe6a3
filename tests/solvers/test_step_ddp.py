"""TrainStep under DDP (2 gloo processes): a non-finite loss on one rank drops the step on
every rank, and the ranks keep the same weights (it used to leave one rank out of the
gradient all-reduce)."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=world)
    try:
        from scepter_core.hooks.base import LoopState
        from scepter_core.solvers.step import StepSettings, TrainStep
        from tests.solvers.tiny_net import TinyNet
        torch.manual_seed(0)
        net = TinyNet({'NOISE': 0.0, 'NAN_CALLS': [2] if rank == 1 else []})
        model = torch.nn.parallel.DistributedDataParallel(net)
        step = TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.5), StepSettings(),
                         parameters=list(model.parameters()))
        state, trace = LoopState(), []
        for i in range(3):
            x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(10 * rank + i))
            step({'image': x}, state)
            trace.append({k: v.detach().clone() for k, v in net.named_parameters()})
        torch.save({'skipped': state.skipped_steps, 'trace': trace}, Path(out) / f'rank{rank}.pt')
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_a_nan_on_one_rank_drops_the_step_on_all(tmp_path: Path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f'rank{r}.pt') for r in (0, 1))
    assert r0['skipped'] == r1['skipped'] == 1
    for a, b in zip(r0['trace'], r1['trace']):
        assert all(torch.equal(a[k], b[k]) for k in a)  # DDP: the same averaged update everywhere
    assert all(torch.equal(r0['trace'][1][k], r0['trace'][0][k]) for k in r0['trace'][0])  # step 2 dropped
    assert all(v.isfinite().all() for v in r0['trace'][2].values())
    assert not all(torch.equal(r0['trace'][2][k], r0['trace'][1][k]) for k in r0['trace'][1])

"""Under DDP every rank computes the same values, equal to one process seeing all images
(torchmetrics gathers the states), also when ranks get different numbers of batches or
none. Two CPU processes over gloo."""
from __future__ import annotations

import json
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import scepter_core.metrics  # noqa: F401  (registers the metrics)
from scepter_core.registry import METRICS

FEATURES = {'NAME': 'RandomConvFeatures', 'FEATURE_DIM': 8, 'WIDTH': 8, 'RESOLUTION': 16}
CONFIGS = [{'NAME': 'FID', 'FEATURE_NETWORK': FEATURES},
           {'NAME': 'KID', 'FEATURE_NETWORK': FEATURES, 'SUBSETS': 5, 'SUBSET_SIZE': 10},
           {'NAME': 'PSNR'}]
# Batches each rank feeds, as (start, stop) into its shard images[rank::2] (12 images each).
SCENARIOS = {'uneven': {0: [(0, 5), (5, 12)], 1: [(0, 12)]},
             'rank1_empty': {0: [(0, 12)], 1: []}}


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    references = torch.rand(24, 3, 16, 16, generator=g)
    return (references + 0.1 * torch.randn(24, 3, 16, 16, generator=g)).clamp(0, 1), references


def _evaluate(batches: dict[int, list[tuple[int, int]]], ranks: list[int]) -> dict[str, float]:
    """Values after feeding the batches of `ranks` (every rank's, in rank order: one process,
    as torchmetrics concatenates gathered states in rank order)."""
    images, references = _data()
    metrics = [METRICS.build(dict(cfg)) for cfg in CONFIGS]
    for rank in ranks:
        shard_images, shard_references = images[rank::2], references[rank::2]
        for start, stop in batches[rank]:
            for metric in metrics:
                metric.update(shard_images[start:stop], references=shard_references[start:stop])
    return {k: v for metric in metrics for k, v in metric.compute().items()}


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank, world_size=2)
    try:
        values = {name: _evaluate(batches, [rank]) for name, batches in SCENARIOS.items()}
    finally:
        dist.destroy_process_group()
    with open(f'{out_dir}/rank{rank}.json', 'w') as f:
        json.dump(values, f)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.mark.timeout(120)
def test_ranks_agree_with_one_process(tmp_path):
    # fork: the workers reuse this process's imports (spawning re-imports torchmetrics twice).
    mp.start_processes(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True, start_method='fork')
    ranks = [json.loads((tmp_path / f'rank{r}.json').read_text()) for r in range(2)]
    assert ranks[0] == ranks[1]
    for name, batches in SCENARIOS.items():
        single = _evaluate(batches, [0, 1])
        assert set(ranks[0][name]) == {'fid', 'kid_mean', 'kid_std', 'psnr'}
        for key, value in single.items():
            assert abs(ranks[0][name][key] - value) <= 1e-6 * max(1.0, abs(value)), (name, key)

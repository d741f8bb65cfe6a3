"""DistSamplerHook: the epoch follows from the samples every rank has read."""
from __future__ import annotations

from types import SimpleNamespace

from scepter_core.hooks.base import LoopState
from scepter_core.hooks.dist_sampler import DistSamplerHook
from scepter_core.registry import DATASETS


class _EpochSampler:
    def __init__(self) -> None:
        self.epochs: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)


def test_dist_sampler_hook_counts_epochs_over_all_samples():
    data = DATASETS.build({'NAME': 'ShapesDataset', 'IMAGE_SIZE': 16, 'NUM_SAMPLES': 10, 'BATCH_SIZE': 4})
    data.sampler = _EpochSampler()
    solver = SimpleNamespace(datas={'train': data}, state=LoopState())
    hook, epochs = DistSamplerHook(), []
    for solver.state.total_iter in range(1, 7):  # 4 samples per micro-batch, 10 records
        hook.after_iter(solver)
        epochs.append(solver.state.epoch)
    assert epochs == [0, 0, 1, 1, 2, 2]
    assert data.sampler.epochs == [1, 2]  # told once per new epoch

"""DistSamplerHook: keeps `solver.state.epoch` (passes over the training data, counted over all
ranks) and tells epoch-aware samplers when a new epoch starts.

Scepter recipes list this hook because Scepter's samplers need `set_epoch` to reshuffle
each rank's shard. Our LoopSampler needs nothing: the epoch follows from the position in
its stream, which is rank-aware and survives resumes, also with another number of processes."""
from __future__ import annotations

from ..env import we
from ..registry import HOOKS
from .base import PRIORITY, BaseHook, TrainLoop


@HOOKS.register_class()
class DistSamplerHook(BaseHook):
    """After each micro-batch: epoch = samples seen by all ranks // dataset size; on a new
    epoch, `set_epoch(epoch)` on a training sampler that has it."""

    default_priority = PRIORITY['DIST_SAMPLER']

    def after_iter(self, solver: TrainLoop) -> None:
        data = solver.datas.get('train')
        if data is None or not len(data):
            return
        epoch = solver.state.total_iter * data.cfg.BATCH_SIZE * we.world_size // len(data)
        if epoch != solver.state.epoch:
            solver.state.epoch = epoch
            sampler = getattr(data, 'sampler', None)
            if hasattr(sampler, 'set_epoch'):
                sampler.set_epoch(epoch)

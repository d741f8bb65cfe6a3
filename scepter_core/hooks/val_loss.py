"""ValLossHook: a deterministic validation loss (fixed samples, noise and timesteps)."""
from __future__ import annotations

import torch

from ..data.collate import to_device
from ..env import PY_RNG, we
from ..registry import DATASETS, HOOKS
from .base import PRIORITY, BaseHook, TrainLoop


@HOOKS.register_class()
class ValLossHook(BaseHook):
    """Every VAL_INTERVAL steps, the mean training loss over fixed batches under a fixed seed;
    training's own random streams are left untouched."""

    default_priority = PRIORITY['VAL_LOSS']
    para_dict = {
        'VAL_INTERVAL': {'value': 100, 'description': 'Steps between validation losses.'},
        'NUM_BATCHES': {'value': 4, 'description': 'Batches averaged.'},
        'SEED': {'value': 1234, 'description': 'Seed of the noise and timesteps.'},
        'DATA': {'value': None, 'registry': 'DATASETS', 'description': 'Validation data; the training data when unset.'},
    }

    def __init__(self, cfg=None, logger=None):
        super().__init__(cfg, logger)
        self.batches: list | None = None
        self.history: list[tuple[int, float]] = []

    def _fixed_batches(self, solver: TrainLoop) -> list:
        if self.batches is None:
            from ..data.loader import build_dataloader
            data = DATASETS.build(self.cfg.DATA, logger=self.logger) if self.cfg.DATA else solver.datas['train']
            loader = build_dataloader(data, seed=self.cfg.SEED, rank=we.rank, world_size=we.world_size)
            it = iter(loader)
            self.batches = []
            for _ in range(self.cfg.NUM_BATCHES):
                batch = next(it)
                batch.pop('_skipped', None)
                self.batches.append(batch)
        return self.batches

    def before_all_iter(self, solver: TrainLoop) -> None:
        # Built up front, before a resumed run restores its RNG state, so that building
        # them can never shift the training's random streams.
        with torch.random.fork_rng(devices=[we.device] if we.device.type == 'cuda' else []):
            self._fixed_batches(solver)

    @torch.no_grad()
    def value(self, solver: TrainLoop) -> float:
        model = solver.unwrapped_model
        was_training = model.training
        py_state = PY_RNG.getstate()
        devices = [we.device] if we.device.type == 'cuda' else []
        losses = []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.cfg.SEED)
            PY_RNG.seed(self.cfg.SEED)
            model.train()
            for batch in self._fixed_batches(solver):
                with solver.autocast():
                    losses.append(float(model.forward_train(**to_device(batch, we.device))['loss']))
        PY_RNG.setstate(py_state)
        model.train(was_training)
        from ..dist import mean_over_ranks
        return mean_over_ranks(sum(losses) / len(losses))  # each rank holds its own shard

    def after_iter(self, solver: TrainLoop) -> None:
        st = solver.state
        if st.is_step_end and self.cfg.VAL_INTERVAL and st.step % self.cfg.VAL_INTERVAL == 0:
            v = self.value(solver)
            self.history.append((st.step, v))
            st.log_values['val_loss'] = v
            if we.is_main:
                self.logger.info(f'step {st.step}: val_loss {v:.5f}')

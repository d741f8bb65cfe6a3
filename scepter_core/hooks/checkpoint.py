"""CheckpointHook: atomic checkpoint trees every INTERVAL steps and at the end."""
from __future__ import annotations

from ..env import we
from ..registry import HOOKS
from .base import PRIORITY, BaseHook, TrainLoop


@HOOKS.register_class()
class CheckpointHook(BaseHook):
    """Saves weights (safetensors) and training state; keeps the last KEEP_LAST; `latest` pointer."""

    default_priority = PRIORITY['CHECKPOINT']
    para_dict = {
        'INTERVAL': {'value': 1000, 'description': 'Steps between checkpoints.'},
        'SAVE_LAST': {'value': True, 'description': 'Also save when training ends.'},
        'KEEP_LAST': {'value': 0, 'description': 'Keep only the newest N checkpoints (0: keep all).'},
        'SAVE_TRAINING_STATE': {'value': True, 'description': 'Save optimizer/scheduler/RNG state for exact resume.'},
        'SAVE_NAME_PREFIX': {'value': 'step', 'choices': ('step',),
                             'description': "Scepter's name prefix: checkpoints are step-NNNNNN directories."},
        'DISABLE_SNAPSHOT': {'value': False, 'description': "Accepted for Scepter's recipes: no separate snapshot "
                                                            'file is written, every checkpoint is a directory.'},
    }

    def __init__(self, cfg=None, logger=None):
        super().__init__(cfg, logger)
        self._saved_step: int | None = None  # the step of the newest checkpoint on disk

    def before_all_iter(self, solver: TrainLoop) -> None:
        st = solver.state
        self._saved_step = st.step if st.last_checkpoint else None  # a resumed run starts from one

    def save_now(self, solver: TrainLoop) -> None:
        """A checkpoint of the current step with its training state (on an interrupt)."""
        if self._saved_step != solver.state.step:
            self._save(solver, with_state=True)

    def after_iter(self, solver: TrainLoop) -> None:
        st = solver.state
        if st.is_step_end and self.cfg.INTERVAL and st.step % self.cfg.INTERVAL == 0:
            self._save(solver)

    def after_all_iter(self, solver: TrainLoop) -> None:
        if self.cfg.SAVE_LAST and solver.state.step > 0 and self._saved_step != solver.state.step:
            self._save(solver)

    def _save(self, solver: TrainLoop, with_state: bool | None = None) -> None:
        if solver.state.nonfinite_in_row:  # weights of a diverging run are not a checkpoint worth keeping
            self.logger.warning(f'step {solver.state.step}: checkpoint skipped after a non-finite loss')
            return
        out = solver.save_checkpoint(with_state=with_state or self.cfg.SAVE_TRAINING_STATE, keep_last=self.cfg.KEEP_LAST)
        self._saved_step = solver.state.step
        if we.is_main:
            self.logger.info(f'checkpoint: {out}')

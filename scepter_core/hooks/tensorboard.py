"""TensorboardLogHook: real TensorBoard event files of the logged scalars."""
from __future__ import annotations

from ..env import we
from ..registry import HOOKS
from .base import PRIORITY, BaseHook, TrainLoop


@HOOKS.register_class()
class TensorboardLogHook(BaseHook):
    """Writes every value in `solver.state.log_values` as a scalar each LOG_INTERVAL steps (rank 0)."""

    default_priority = PRIORITY['TENSORBOARD']
    para_dict = {
        'LOG_DIR': {'value': None, 'type': str, 'description': 'Event file directory; WORK_DIR/tensorboard when unset.'},
        'LOG_INTERVAL': {'value': 10, 'description': 'Steps between writes.'},
    }

    def __init__(self, cfg=None, logger=None):
        super().__init__(cfg, logger)
        self.writer = None

    def before_solve(self, solver: TrainLoop) -> None:
        if we.is_main:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(self.cfg.LOG_DIR or str(solver.work_dir / 'tensorboard'))

    def after_iter(self, solver: TrainLoop) -> None:
        st = solver.state
        if self.writer is None or not st.is_step_end:
            return
        if st.step % self.cfg.LOG_INTERVAL == 0 or st.step == st.max_steps:
            for k, v in st.log_values.items():
                if not k.startswith('eval/'):  # written by after_eval, at the step they were measured
                    self.writer.add_scalar(k, v, st.step)
            self.writer.flush()

    def after_eval(self, solver: TrainLoop) -> None:
        if self.writer is None:
            return
        for k, v in solver.state.metric_values.items():
            self.writer.add_scalar(f'eval/{k}', v, solver.state.step)
        self.writer.flush()

    def after_solve(self, solver: TrainLoop) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

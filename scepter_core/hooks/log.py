"""LogHook: a progress bar plus periodic lines with loss, lr, speed, ETA and memory;
keeps the loss history and draws the loss curve after training."""
from __future__ import annotations

import contextlib
import json
import math
import time
from collections import deque

import torch

from ..dist import mean_over_ranks
from ..env import we
from ..registry import HOOKS
from ..utils.progress import progress_bar
from .base import PRIORITY, BaseHook, LoopState, TrainLoop


def _peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2 ** 20
    try:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    except ImportError:
        return 0.0


@HOOKS.register_class()
class LogHook(BaseHook):
    """Every LOG_INTERVAL steps: step/total, windowed loss, lr, it/s, images/s, data share, ETA, memory."""

    default_priority = PRIORITY['LOG']
    para_dict = {
        'LOG_INTERVAL': {'value': 10, 'description': 'Steps between log lines.'},
        'WINDOW': {'value': 50, 'description': 'Steps in the moving average of the loss.'},
        'LOSS_CURVE': {'value': True, 'description': 'Write loss_curve.png and loss_history.json after training.'},
        'SHOW_GPU_MEM': {'value': True, 'description': "Accepted for Scepter's recipes: the peak CUDA memory is "
                                                        'always in the log line on a GPU.'},
    }

    def __init__(self, cfg=None, logger=None):
        super().__init__(cfg, logger)
        self.window: deque[float] = deque(maxlen=self.cfg.WINDOW)
        self.history: list[tuple[int, float]] = []
        self._step_losses: list[float] = []
        self._stack = contextlib.ExitStack()
        self._advance = None
        self._t_last = self._it_last = 0.0

    def before_all_iter(self, solver: TrainLoop) -> None:
        st = solver.state
        self._advance = self._stack.enter_context(progress_bar(st.max_steps, 'train', enabled=we.is_main))
        self._advance(st.step)
        self._t_last, self._it_last = time.perf_counter(), st.step
        self._timing_last = dict(st.timing)

    def after_iter(self, solver: TrainLoop) -> None:
        st = solver.state
        loss = st.iter_outputs.get('loss')
        if loss is not None:
            self._step_losses.append(float(loss.detach().float()))
        if not st.is_step_end:
            return
        step_loss = sum(self._step_losses) / max(len(self._step_losses), 1)
        self._step_losses = []
        if math.isfinite(step_loss):  # a skipped step (non-finite loss) would spoil the average for WINDOW steps
            self.window.append(step_loss)
            self.history.append((st.step, step_loss))
        lr = solver.optimizer.param_groups[0]['lr'] if solver.optimizer else 0.0
        st.log_values.update({'loss': step_loss, 'lr': lr})
        self._advance(1, loss=step_loss)
        if st.step % self.cfg.LOG_INTERVAL == 0 or st.step == st.max_steps:
            self._log_line(st, lr)

    def _log_line(self, st: LoopState, lr: float) -> None:
        loss = mean_over_ranks(sum(self.window) / max(len(self.window), 1))
        now = time.perf_counter()
        steps = st.step - self._it_last
        dt = max(now - self._t_last, 1e-9)
        t = st.timing
        data_dt = t['data'] - self._timing_last['data']
        iter_dt = max(t['iter'] - self._timing_last['iter'], 1e-9)
        images = (t['samples'] - self._timing_last['samples']) * we.world_size
        eta = (st.max_steps - st.step) * dt / max(steps, 1)
        st.log_values.update({'loss_avg': loss, 'images_per_s': images / dt})
        if we.is_main:
            extra = f', skipped samples {st.skipped_samples}' if st.skipped_samples else ''
            self.logger.info(
                f'step {st.step}/{st.max_steps}  loss {loss:.5f}  lr {lr:.3g}  {steps / dt:.2f} it/s  '
                f'{images / dt:.1f} img/s  data {100 * data_dt / iter_dt:.0f}%  eta {eta / 60:.1f} min  '
                f'peak mem {_peak_memory_mb():.0f} MB{extra}')
        self._t_last, self._it_last, self._timing_last = now, st.step, dict(t)

    def after_all_iter(self, solver: TrainLoop) -> None:
        self._stack.close()
        if we.is_main and self.cfg.LOSS_CURVE and self.history:
            from ..utils.plot import line_plot
            solver.work_dir.mkdir(parents=True, exist_ok=True)
            (solver.work_dir / 'loss_history.json').write_text(json.dumps(self.history))
            line_plot([s for s, _ in self.history], [v for _, v in self.history], solver.work_dir / 'loss_curve.png',
                      title='training loss', xlabel='step', smooth=max(1, len(self.history) // 50))

    def state_dict(self) -> dict:
        return {'history': [list(x) for x in self.history], 'window': list(self.window)}

    def load_state_dict(self, state: dict) -> None:
        self.history = [tuple(x) for x in state.get('history', [])]
        self.window.extend(state.get('window', []))

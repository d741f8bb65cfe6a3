"""ENV.USE_PL: the solver's model and training loop under a Lightning Trainer.

Lightning starts the processes (one per GPU, or ENV.NUM_PROCESSES on CPU; several nodes
with WORLD_SIZE = node count and RANK = node rank as in the spawn launcher, or under
torchrun / SLURM as Lightning detects them), joins the process group and wraps the model in
DDP. Each training step is the solver's own (`BaseSolver.train_step` and its `TrainStep`:
forward, backward, optimizer and LR steps), with the backward pass through Lightning's
`manual_backward`; the hooks log, probe and checkpoint in our format.
SIGINT / SIGTERM stop as without Lightning (solvers/interrupt.py): the signal reaches the first
process (the processes Lightning starts are in their own process group and die with it), the
ranks agree at the step end, rank 0 reports and the others leave quietly.
Install with `pip install 'scepter-forge[lightning]'`."""
from __future__ import annotations

import datetime
import logging
import os
import time
import warnings
from typing import Any

import torch

from .config import Config
from .errors import ConfigError

try:
    import lightning.pytorch as pl
except ImportError:  # the older distribution name
    try:
        import pytorch_lightning as pl
    except ImportError:
        pl = None


def lightning_available() -> bool:
    return pl is not None


class SolverModule(pl.LightningModule if pl else object):
    """A LightningModule whose training step is one micro-batch of the solver's loop."""

    def __init__(self, recipe: Config):
        super().__init__()
        self.recipe = recipe
        self.solver: Any = None
        self.automatic_optimization = False  # the solver's TrainStep steps the optimizer
        self._fetch_started = 0.0
        self._stop: Any = None

    def setup(self, stage: str) -> None:
        from .worker import build_solver
        # The process group exists now; Lightning (not the solver) wraps the model in DDP.
        self.solver = build_solver(self.recipe, 'train', wrap_model=False)
        self.net = self.solver.model
        # Lightning's DDP syncs gradients in its own backward (prepare_for_backward first)
        self.solver.stepper.backward = self.manual_backward

    def configure_optimizers(self) -> Any:
        return self.solver.optimizer

    def train_dataloader(self) -> Any:
        return self.solver.train_loader()

    def on_train_start(self) -> None:
        from .solvers.interrupt import StopRequest
        # ours replace Lightning's handlers (its SIGTERM stops with exit 0 and no checkpoint)
        self._stop = StopRequest(self.solver.logger).__enter__()
        self.solver.before_solve()
        self.solver.begin_train()
        self._fetch_started = time.perf_counter()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        solver = self.solver
        fetched = time.perf_counter()
        solver.state.skipped_samples += int(batch.pop('_skipped', 0) or 0)
        solver.call_hooks('before_iter')
        solver.train_step(batch, self._fetch_started, fetched)
        solver.stop_if_asked(self._stop)
        if solver.state.step >= solver.state.max_steps:
            self.trainer.should_stop = True
        self._fetch_started = time.perf_counter()

    def on_train_end(self) -> None:
        self._stop.__exit__(None, None, None)
        self.solver.call_hooks('after_all_iter')
        self.solver.after_solve()


def _num_nodes(devices: int) -> int:
    if 'LOCAL_RANK' in os.environ and 'WORLD_SIZE' in os.environ:  # a worker Lightning started
        return max(int(os.environ['WORLD_SIZE']) // devices, 1)
    os.environ.setdefault('NODE_RANK', os.environ.get('RANK', '0'))  # Scepter: RANK is the node rank
    return int(os.environ.get('WORLD_SIZE', 1))                     # and WORLD_SIZE the node count


def run_lightning(cfg: Config) -> Any:
    """Train cfg.SOLVER under a Lightning Trainer; returns the solver (in this process)."""
    if pl is None:
        raise ConfigError("ENV.USE_PL: Lightning is not installed; pip install 'scepter-forge[lightning]' "
                          "(or set ENV.USE_PL to false)")
    from .dist import backend_for, uses_cuda
    if cfg.SOLVER.get('USE_FSDP'):
        raise ConfigError("'SOLVER.USE_FSDP' does not combine with ENV.USE_PL (Lightning wraps the model in DDP); "
                          "use the spawn or torchrun launcher for FSDP")
    env = cfg.get('ENV') or Config()
    cuda = uses_cuda(env)
    devices = torch.cuda.device_count() if cuda else int(env.get('NUM_PROCESSES') or 1)
    nodes = _num_nodes(devices)
    strategy: Any = 'auto'
    if devices * nodes > 1:
        strategy = pl.strategies.DDPStrategy(process_group_backend=backend_for(env),
                                             timeout=datetime.timedelta(minutes=float(env.get('TIMEOUT_MINUTES') or 30)))
    for name in ('lightning.pytorch', 'pytorch_lightning', 'lightning.fabric'):
        logging.getLogger(name).setLevel(logging.WARNING)  # our LogHook reports progress
    # frozen parts (autoencoder, text encoder) stay in eval mode on purpose
    warnings.filterwarnings('ignore', message=r'Found \d+ module\(s\) in eval mode')
    trainer = pl.Trainer(accelerator='gpu' if cuda else 'cpu', devices=devices, num_nodes=nodes, strategy=strategy,
                         precision='32-true', logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, max_epochs=-1, max_steps=-1, use_distributed_sampler=False,
                         num_sanity_val_steps=0, limit_val_batches=0)
    module = SolverModule(cfg)
    from .processes import is_first_process
    from .solvers.interrupt import Interrupted
    first = _join_first_process()
    try:
        try:
            trainer.fit(module)
        except KeyboardInterrupt as e:  # a late signal while Lightning's teardown had put back the default handler
            if isinstance(e.__context__, Interrupted):
                raise e.__context__ from None
            raise
    except Interrupted:
        module._stop.settle()  # Lightning's teardown put back the handlers from before fit
        if is_first_process():
            raise
        return None  # rank 0 reports the stop; a failing exit here would make Lightning kill it
    finally:
        if first:
            os.environ.pop(_FIRST_PID, None)
    return module.solver


_FIRST_PID = 'SCEPTER_PL_FIRST_PID'  # set while fitting: the processes Lightning starts inherit it


def _join_first_process() -> bool:
    """True in the first process. In one that Lightning started for another rank: leave the
    terminal's process group (a Ctrl-C reaches the first process alone, which decides for all)
    and die with the first process."""
    if os.environ.get(_FIRST_PID, str(os.getpid())) == str(os.getpid()):
        os.environ[_FIRST_PID] = str(os.getpid())
        return True
    if hasattr(os, 'setpgrp'):
        from .processes import die_with_parent
        os.setpgrp()
        die_with_parent()
    return False

"""BaseSolver: the seed's lifecycle (set_up -> solve -> run_train/run_eval/run_test)
and a training loop that reads top to bottom: each micro-batch goes through the training
step (`step.py`), then the hooks. Side concerns live in hooks; checkpoints in `state.py`."""
from __future__ import annotations

import logging
import math
import signal
import time
from pathlib import Path
from typing import Any, Iterator

import torch

from ..base import BaseObject
from ..config import Config
from ..data.collate import to_device
from ..env import we
from ..errors import ConfigError
from ..hooks.base import LoopState
from ..models.base import device_autocast
from ..registry import DATASETS, HOOKS, LR_SCHEDULERS, METRICS, MODELS, OPTIMIZERS
from . import state as ckpt
from ..accel.switches import apply_model_fast_paths, apply_train_fast_paths
from .interrupt import Interrupted, StopRequest
from .step import StepSettings, TrainStep

DTYPES = {'float32': torch.float32, 'float16': torch.float16, 'bfloat16': torch.bfloat16}


class BaseSolver(BaseObject):
    """Builds data, model, metrics and optimizer from SOLVER; runs the modes it has data for."""

    para_dict = {
        'WORK_DIR': {'value': './work_dirs/run', 'description': 'Outputs: checkpoints, logs, probes, config.'},
        'LOG_FILE': {'value': 'std_log.txt', 'type': str, 'description': 'Log file name inside WORK_DIR.'},
        'SEED': {'value': 2023, 'description': 'Seed for everything random in training.'},
        'MAX_STEPS': {'value': 1000, 'min': 0,
                      'description': 'Optimizer steps to train (ignored when MAX_EPOCHS > 0).'},
        'MAX_EPOCHS': {'value': -1, 'description': 'Train this many passes over TRAIN_DATA instead (-1: off).'},
        'NUM_FOLDS': {'value': 1, 'description': 'Accepted for Scepter recipes (repeats of the data per epoch).'},
        'ACCU_STEP': {'value': 1, 'description': 'Micro-batches accumulated per optimizer step.'},
        'EVAL_INTERVAL': {'value': 0, 'description': 'Run evaluation (EVAL_DATA, METRICS) every N steps; 0: off.'},
        'RESUME_FROM': {'value': None, 'type': str, 'description': "Checkpoint to resume: a step dir, a work dir or 'latest'."},
        'LOAD_MODEL_ONLY': {'value': False, 'description': 'With RESUME_FROM: load weights only, start at step 0.'},
        'USE_AMP': {'value': False, 'description': 'Mixed precision (autocast) in DTYPE.'},
        'DTYPE': {'value': 'float32', 'choices': tuple(DTYPES), 'description': 'Autocast dtype with USE_AMP.'},
        'CHANNELS_LAST': {'value': False, 'description': 'Use channels_last memory format for conv weights.'},
        'CPU_FAST_PATHS': {'value': True, 'description': 'CPU fast paths (oneDNN linears, packed conv weights, '
                                                         'fused attention) on a CPU model; SCEPTER_CPU_FAST_PATHS=0 also turns them off.'},
        'RESCALE_LR': {'value': False, 'description': 'Multiply the learning rate by world size x batch size.'},
        'USE_FSDP': {'value': False, 'description': 'Shard the model with FSDP (multi-process).'},
        'SHARDING_STRATEGY': {'value': None, 'type': str, 'description': 'FSDP: full_shard | shard_grad_op | hybrid_shard.'},
        # Keys of Scepter's FLUX / SD3 recipes, with their meaning here.
        'FSDP_SHARD_MODULES': {'value': [], 'type': list, 'description': "Accepted for Scepter's recipes: FSDP "
                               'shards every block of the model (one unit per transformer / res block).'},
        'FSDP_REDUCE_DTYPE': {'value': None, 'type': str, 'description': "Accepted for Scepter's recipes: FSDP "
                              'reduces gradients in the parameters\' dtype (float32 here).'},
        'FSDP_BUFFER_DTYPE': {'value': None, 'type': str, 'description': "Accepted for Scepter's recipes: buffers "
                              'keep their own dtype.'},
        'USE_FAIRSCALE': {'value': False, 'choices': (False,), 'description': 'FairScale is not used: false.'},
        'USE_SCALER': {'value': None, 'type': bool, 'description': "Scepter's fp16 gradient-scaler switch: the "
                       'scaler runs with USE_AMP and DTYPE float16; false here turns it off.'},
        'ENABLE_GRADSCALER': {'value': None, 'type': bool, 'description': "Scepter's other spelling of USE_SCALER."},
        'LOG_TRAIN_NUM': {'value': 16, 'description': "Accepted for Scepter's recipes (probes take ProbeDataHook's "
                                                      'NUM_SAMPLES).'},
        'FREEZE': {'value': [], 'description': 'Module name prefixes to freeze, e.g. [cond_stage_model].'},
        'QUANTIZE_BASE': {'value': None, 'type': str, 'choices': (None, 'int8', 'fp8'),
                          'description': 'Hold the frozen Linear weights quantized (torchao): int8 on any device, '
                                         'fp8 on fp8 GPUs; with a TUNER the whole base is frozen.'},
        'TRAIN_MODULES': {'value': [], 'description': 'If set, only these module prefixes train.'},
        'SAVE_MODULES': {'value': [], 'description': 'If set, checkpoints keep only these module prefixes.'},
        'TUNER': {'value': None, 'registry': 'TUNERS',
                  'description': 'Parameter-efficient tuners (list of TUNERS blocks) or a trained adapter path.'},
        'FILE_SYSTEM': {'value': None, 'registry': 'FILE_SYSTEMS', 'description': 'File system block (cache directory).'},
        'MODEL': {'value': None, 'registry': 'MODELS', 'description': 'The network to train or test.'},
        'TRAIN_DATA': {'value': None, 'registry': 'DATASETS', 'description': 'Training data.'},
        'EVAL_DATA': {'value': None, 'registry': 'DATASETS', 'description': 'Evaluation data (run every EVAL_INTERVAL).'},
        'TEST_DATA': {'value': None, 'registry': 'DATASETS', 'description': 'Test data (`scepter test`).'},
        'TRAIN_HOOKS': {'value': [], 'registry': 'HOOKS', 'description': 'Hooks of the training loop.'},
        'EVAL_HOOKS': {'value': [], 'registry': 'HOOKS', 'description': 'Hooks run on evaluation outputs.'},
        'TEST_HOOKS': {'value': [], 'registry': 'HOOKS', 'description': 'Hooks run on test outputs.'},
        'OPTIMIZER': {'value': {'NAME': 'AdamW'}, 'registry': 'OPTIMIZERS', 'description': 'Optimizer block.'},
        'LR_SCHEDULER': {'value': None, 'registry': 'LR_SCHEDULERS', 'description': 'Learning-rate schedule block.'},
        'METRICS': {'value': [], 'registry': 'METRICS', 'description': 'Metrics computed by eval and test.'},
        'COMPILE': {'value': False, 'description': 'torch.compile the model (falls back cleanly when unsupported).'},
        'CACHE_LATENTS': {'value': False, 'description': 'Compute latents and frozen text embeddings once per '
                                                         'distinct image / prompt (small datasets).'},
        'CACHE_MAX_MB': {'value': 1024, 'description': 'Memory cap of CACHE_LATENTS, in megabytes.'},
        'CACHE_DIR': {'value': None, 'type': str, 'description': 'With CACHE_LATENTS: also keep them on disk here, '
                                                                 'for later runs and other processes (scepter data cache).'},
    }

    def __init__(self, cfg: Config | dict, logger: logging.Logger | None = None, mode: str = 'train'):
        super().__init__(cfg, logger)
        c = self.cfg
        self.work_dir = Path(c.WORK_DIR)
        self._mode_set = {'train': {'train', 'eval'}, 'test': {'test'}, 'eval': {'eval'}}.get(mode, {mode})
        self.use_amp, self.dtype = bool(c.USE_AMP), DTYPES[c.DTYPE]
        self.state = LoopState(max_steps=int(c.MAX_STEPS))  # progress and outputs, as hooks see them
        self.datas: dict[str, Any] = {}
        self.hooks: dict[str, list] = {}
        self.metrics: list = []
        self.model: torch.nn.Module | None = None
        self.optimizer = self.lr_scheduler = self.scaler = None
        self.step_settings = StepSettings()
        self.stepper: TrainStep | None = None  # the training step, built with the optimizer
        self._resume: dict[str, Any] | None = None

    @property
    def step(self) -> int:
        """Optimizer steps done."""
        return self.state.step

    # ---- lifecycle (the seed's) --------------------------------------------------------
    def set_up(self) -> None:
        self.construct_hooks()  # first: BackwardHook's block holds settings the rest needs
        self.construct_data()
        self.construct_model()
        self.construct_metrics()
        self.model_to_device()
        self.init_opti()
        if self.cfg.RESUME_FROM and 'train' in self._mode_set:
            self.load_checkpoint(self.cfg.RESUME_FROM)

    def solve(self) -> None:
        self.before_solve()
        if 'train' in self._mode_set and 'train' in self.datas:
            self.run_train()
        if 'test' in self._mode_set:
            self.run_test()
        if self._mode_set == {'eval'}:
            self.run_eval()
        self.after_solve()

    def before_solve(self) -> None:
        self.call_hooks('before_solve')

    def after_solve(self) -> None:
        self.call_hooks('after_solve')
        cache = getattr(self.unwrapped_model, 'latent_cache', None)
        if cache is not None and cache.disk is not None:  # SOLVER.CACHE_DIR: the next run finds every row
            cache.disk.close()

    # ---- construction -------------------------------------------------------------------
    def construct_data(self) -> None:
        keys = {'train': 'TRAIN_DATA', 'eval': 'EVAL_DATA', 'test': 'TEST_DATA'}
        for mode, key in keys.items():
            if mode in self._mode_set and self.cfg[key]:
                self.datas[mode] = DATASETS.build(self.cfg[key], logger=self.logger, **self._data_extras(mode, key))
        if 'test' in self._mode_set and 'test' not in self.datas:
            raise ConfigError("'SOLVER.TEST_DATA': nothing to test: the recipe has no TEST_DATA block")
        if self.cfg.MAX_EPOCHS and self.cfg.MAX_EPOCHS > 0 and 'train' in self.datas:
            data = self.datas['train']
            per_step = data.cfg.BATCH_SIZE * we.world_size * self.step_settings.accu_step
            self.state.max_steps = math.ceil(self.cfg.MAX_EPOCHS * len(data) * self.cfg.NUM_FOLDS / per_step)

    def _data_extras(self, mode: str, key: str) -> dict[str, Any]:
        """A dataset that keeps a file index beside the latent cache gets its directory."""
        takes = getattr(DATASETS.get(self.cfg[key].NAME), 'takes_cache_dir', False)
        if mode == 'train' and takes and self.cfg.CACHE_LATENTS and self.cfg.CACHE_DIR:
            return {'cache_dir': self.cfg.CACHE_DIR}
        return {}

    def construct_model(self) -> None:
        self.model = MODELS.build(self.cfg.MODEL, logger=self.logger)
        if self.cfg.QUANTIZE_BASE:  # before the tuner wraps the layers (peft wraps quantized ones)
            from ..models.quantize import quantize_frozen
            if self.cfg.TUNER:
                self.model.requires_grad_(False)
            else:
                self._apply_freeze()
            quantize_frozen(self.model, self.cfg.QUANTIZE_BASE, self.logger)
        if self.cfg.TUNER:  # adapters go in before DDP wrapping and before the optimizer sees parameters
            from ..tuners import apply_tuners
            self.model = apply_tuners(self.model, self.cfg.TUNER, self.logger)
        self._check_alignment()

    def _check_alignment(self) -> None:
        """Bucket sides (multiples of TRAIN_DATA.ALIGNMENT) must suit the model, or the first
        odd-sized batch fails deep inside the backbone."""
        data = self.datas.get('train')
        align = data.cfg.get('ALIGNMENT') if data is not None else None
        need = getattr(self.unwrapped_model, 'pixel_multiple', None)
        if align and need and align % need:
            raise ConfigError(f"'SOLVER.TRAIN_DATA.ALIGNMENT': {align} is not a multiple of {need}, the model's "
                              f'VAE factor times its backbone downsampling; bucket sides must be (e.g. {need})')

    def construct_metrics(self) -> None:
        self.metrics = [METRICS.build(m, logger=self.logger) for m in self.cfg.METRICS or []]

    def construct_hooks(self) -> None:
        for stage, key in (('train', 'TRAIN_HOOKS'), ('eval', 'EVAL_HOOKS'), ('test', 'TEST_HOOKS')):
            hooks = [HOOKS.build(h, logger=self.logger) for h in self.cfg[key] or []]
            self.hooks[stage] = sorted(hooks, key=lambda h: h.priority)
        self.step_settings = StepSettings.from_config(self.cfg, self.hooks['train'])

    @property
    def unwrapped_model(self) -> torch.nn.Module:
        return getattr(self.model, 'module', self.model)

    cfg_root: Config | None = None  # the whole recipe, saved beside each checkpoint
    wrap_model = True  # DDP/FSDP around the model under several processes (Lightning wraps it itself)

    def model_to_device(self) -> None:
        self.model.to(we.device)
        apply_model_fast_paths(self)  # CPU_FAST_PATHS, CHANNELS_LAST, COMPILE (accel/)
        if not we.is_distributed or not self.wrap_model:
            return
        if any(p.requires_grad for p in self.model.parameters()) or self.cfg.USE_FSDP:
            from ..parallel import wrap_distributed  # DDP/FSDP start every rank from rank 0's weights
            self.model = wrap_distributed(self.model, self.cfg, self.logger)
        else:  # nothing trains: still, every rank must sample with the same weights
            from ..dist import broadcast_module
            broadcast_module(self.model)

    def _apply_freeze(self) -> None:
        model = self.unwrapped_model
        train_only, frozen = tuple(self.cfg.TRAIN_MODULES or ()), tuple(self.cfg.FREEZE or ())
        for name, p in model.named_parameters():
            if (train_only and not name.startswith(train_only)) or (frozen and name.startswith(frozen)):
                p.requires_grad_(False)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def init_opti(self) -> None:
        if 'train' not in self._mode_set or 'train' not in self.datas:
            return
        self._apply_freeze()
        apply_train_fast_paths(self)  # frozen modules in the AMP dtype, CACHE_LATENTS (accel/)
        opt_cfg = self.cfg.OPTIMIZER
        if self.cfg.RESCALE_LR:
            opt_cfg.LEARNING_RATE *= we.world_size * self.datas['train'].cfg.BATCH_SIZE * self.step_settings.accu_step
        params = self.trainable_parameters()
        self.optimizer = OPTIMIZERS.build(opt_cfg, logger=self.logger, parameters=params)
        if self.cfg.LR_SCHEDULER:
            self.lr_scheduler = LR_SCHEDULERS.build(self.cfg.LR_SCHEDULER, logger=self.logger,
                                                    optimizer=self.optimizer, total_steps=self.state.max_steps)
        scaler_off = False in (self.cfg.USE_SCALER, self.cfg.ENABLE_GRADSCALER)  # Scepter's switches
        if self.use_amp and self.dtype == torch.float16 and not scaler_off:
            self.scaler = torch.amp.GradScaler(we.device.type)
        self.stepper = TrainStep(self.model, self.optimizer, self.step_settings, parameters=params,
                                 lr_scheduler=self.lr_scheduler, scaler=self.scaler, autocast=self.autocast,
                                 logger=self.logger)
        n_train = sum(p.numel() for p in params)
        n_all = sum(p.numel() for p in self.model.parameters())
        self.logger.info(f'parameters: {n_train:,} trainable of {n_all:,}')

    # ---- hooks ----------------------------------------------------------------------------
    def call_hooks(self, stage: str, which: str = 'train') -> None:
        for hook in self.hooks.get(which, []):
            getattr(hook, stage)(self)

    def autocast(self):
        return device_autocast(we.device, self.dtype, enabled=self.use_amp)

    # ---- training -------------------------------------------------------------------------
    def train_loader(self) -> Any:
        """This rank's shard of the training data, resuming where a checkpoint left off."""
        from ..data.loader import build_dataloader
        data = self.datas['train']
        return build_dataloader(data, seed=self.cfg.SEED, rank=we.rank, world_size=we.world_size,
                                start_sample=self.state.total_iter * data.cfg.BATCH_SIZE)

    def batches(self) -> Iterator[dict[str, Any]]:
        """Training batches on the device. The loader iterator is created here, eagerly:
        creating it draws from the global RNG."""
        it = iter(self.train_loader())

        def gen() -> Iterator[dict[str, Any]]:
            for batch in it:
                self.state.skipped_samples += int(batch.pop('_skipped', 0) or 0)
                yield to_device(batch, we.device)
        return gen()

    def run_train(self) -> None:
        data_iter = self.batches()
        with StopRequest(self.logger) as stop:
            self.begin_train()
            while self.state.step < self.state.max_steps:
                self.call_hooks('before_iter')
                t0 = time.perf_counter()
                batch = next(data_iter)
                self.train_step(batch, t0, time.perf_counter())
                self.stop_if_asked(stop)
        self.call_hooks('after_all_iter')

    def stop_if_asked(self, stop: StopRequest) -> None:
        """At a step end: when a signal reached any rank, all of them checkpoint and stop here."""
        signum = stop.requested() if self.state.is_step_end else 0
        if signum:
            try:
                self.stop_on_signal(signum)
            finally:
                stop.settle()

    def stop_on_signal(self, signum: int) -> None:
        """Write a checkpoint of the step just finished and stop (a signal asked to)."""
        saver = next((h for h in self.hooks.get('train', []) if hasattr(h, 'save_now')), None)
        if saver is not None:
            saver.save_now(self)
        elif not self.state.nonfinite_in_row:
            self.state.last_checkpoint = str(self.save_checkpoint(with_state=True))
        name = signal.Signals(signum).name
        where = self.state.last_checkpoint
        saved = f'checkpoint {where}; continue with --resume latest' if where else 'no checkpoint written'
        raise Interrupted(f'stopped by {name} after step {self.step}: {saved}', signum)

    def begin_train(self) -> None:
        self.model.train()
        ckpt.refuse_newer(self.work_dir / 'checkpoints', self.state.step)
        self.call_hooks('before_all_iter')
        ckpt.pin_cpu_gemm(self._resume)
        ckpt.restore_rng(self._resume, self.cfg.SEED, self.state.step)  # last: loader creation must not shift it

    def train_step(self, batch: dict[str, Any], t0: float, t1: float) -> None:
        """One micro-batch: the training step (forward, backward and, at a step end, the
        optimizer and LR steps), then the hooks (EMA, log, probe, checkpoint), then a periodic
        evaluation. `t0`/`t1`: when fetching the batch began and ended."""
        self.stepper(batch, self.state)
        self.call_hooks('after_iter')
        timing = self.state.timing
        timing['data'] += t1 - t0
        timing['iter'] += time.perf_counter() - t0
        timing['samples'] += self.datas['train'].cfg.BATCH_SIZE
        step = self.state.step
        if self.state.is_step_end and self.cfg.EVAL_INTERVAL and step % self.cfg.EVAL_INTERVAL == 0 \
                and 'eval' in self.datas:
            self.run_eval()
            self.model.train()

    def run_eval(self) -> None:
        """Evaluate on EVAL_DATA; subclasses define what evaluation produces."""

    def run_test(self) -> None:
        """Test on TEST_DATA; subclasses define what testing produces."""

    # ---- checkpoints ------------------------------------------------------------------------
    @property
    def is_fsdp(self) -> bool:
        return bool(self.cfg.USE_FSDP) and we.is_distributed and self.wrap_model

    def save_checkpoint(self, with_state: bool = True, keep_last: int = 0) -> Path:
        """The checkpoint tree of the current step (all ranks call; rank 0 writes and keeps the
        newest `keep_last`, 0: all)."""
        return ckpt.save(self, with_state, keep_last)

    def load_checkpoint(self, checkpoint: str) -> None:
        self._resume = ckpt.load(self, checkpoint)

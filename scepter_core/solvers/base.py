"""BaseSolver: the seed's lifecycle (set_up -> solve -> run_train/run_eval/run_test)
and a training loop that reads top to bottom. Side concerns live in hooks."""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Iterator

import torch

from ..base import BaseObject
from ..config import Config
from ..env import we
from ..errors import ConfigError
from ..models.base import device_autocast
from ..registry import DATASETS, HOOKS, LR_SCHEDULERS, METRICS, MODELS, OPTIMIZERS
from . import state as ckpt
from .fast_paths import apply_model_fast_paths, apply_train_fast_paths

DTYPES = {'float32': torch.float32, 'float16': torch.float16, 'bfloat16': torch.bfloat16}


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


class BaseSolver(BaseObject):
    """Builds data, model, metrics and optimizer from SOLVER; runs the modes it has data for."""

    para_dict = {
        'WORK_DIR': {'value': './work_dirs/run', 'description': 'Outputs: checkpoints, logs, probes, config.'},
        'LOG_FILE': {'value': 'std_log.txt', 'type': str, 'description': 'Log file name inside WORK_DIR.'},
        'SEED': {'value': 2023, 'description': 'Seed for everything random in training.'},
        'MAX_STEPS': {'value': 1000, 'description': 'Optimizer steps to train (ignored when MAX_EPOCHS > 0).'},
        'MAX_EPOCHS': {'value': -1, 'description': 'Train this many passes over TRAIN_DATA instead (-1: off).'},
        'NUM_FOLDS': {'value': 1, 'description': 'Accepted for Scepter recipes (repeats of the data per epoch).'},
        'ACCU_STEP': {'value': 1, 'description': 'Micro-batches accumulated per optimizer step.'},
        'EVAL_INTERVAL': {'value': 0, 'description': 'Run evaluation (EVAL_DATA, METRICS) every N steps; 0: off.'},
        'RESUME_FROM': {'value': None, 'type': str, 'description': "Checkpoint to resume: a step dir, a work dir or 'latest'."},
        'LOAD_MODEL_ONLY': {'value': False, 'description': 'With RESUME_FROM: load weights only, start at step 0.'},
        'USE_AMP': {'value': False, 'description': 'Mixed precision (autocast) in DTYPE.'},
        'DTYPE': {'value': 'float32', 'choices': tuple(DTYPES), 'description': 'Autocast dtype with USE_AMP.'},
        'CHANNELS_LAST': {'value': False, 'description': 'Use channels_last memory format for conv weights.'},
        'RESCALE_LR': {'value': False, 'description': 'Multiply the learning rate by world size x batch size.'},
        'USE_FSDP': {'value': False, 'description': 'Shard the model with FSDP (multi-process).'},
        'SHARDING_STRATEGY': {'value': None, 'type': str, 'description': 'FSDP: full_shard | shard_grad_op | hybrid_shard.'},
        'FREEZE': {'value': [], 'description': 'Module name prefixes to freeze, e.g. [cond_stage_model].'},
        'TRAIN_MODULES': {'value': [], 'description': 'If set, only these module prefixes train.'},
        'SAVE_MODULES': {'value': [], 'description': 'If set, checkpoints keep only these module prefixes.'},
        'TUNER': {'value': None, 'description': 'Parameter-efficient tuners (list of TUNERS blocks) or a trained adapter path.'},
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
        self.max_steps, self.accu_step = int(c.MAX_STEPS), int(c.ACCU_STEP)
        self.use_amp, self.dtype = bool(c.USE_AMP), DTYPES[c.DTYPE]
        self.step = 0               # completed optimizer steps
        self.total_iter = 0         # completed micro-batches
        self.epoch = 0
        self.is_step_end = False
        self.iter_outputs: dict[str, Any] = {}
        self.log_values: dict[str, float] = {}
        self.timing = {'data': 0.0, 'iter': 0.0, 'samples': 0}
        self.skipped_samples = 0
        self.nonfinite_in_row = 0   # set by BackwardHook
        self.last_checkpoint: str | None = None
        self.datas: dict[str, Any] = {}
        self.hooks: dict[str, list] = {}
        self.metrics: list = []
        self.model: torch.nn.Module | None = None
        self.optimizer = self.lr_scheduler = self.scaler = None
        self._resume_state: dict[str, Any] | None = None

    # ---- lifecycle (the seed's) --------------------------------------------------------
    def set_up(self) -> None:
        self.construct_data()
        self.construct_model()
        self.construct_metrics()
        self.model_to_device()
        self.init_opti()
        self.construct_hooks()
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

    # ---- construction -------------------------------------------------------------------
    def construct_data(self) -> None:
        keys = {'train': 'TRAIN_DATA', 'eval': 'EVAL_DATA', 'test': 'TEST_DATA'}
        for mode, key in keys.items():
            if mode in self._mode_set and self.cfg[key]:
                self.datas[mode] = DATASETS.build(self.cfg[key], logger=self.logger)
        if 'test' in self._mode_set and 'test' not in self.datas:
            raise ConfigError("'SOLVER.TEST_DATA': nothing to test: the recipe has no TEST_DATA block")
        if self.cfg.MAX_EPOCHS and self.cfg.MAX_EPOCHS > 0 and 'train' in self.datas:
            data = self.datas['train']
            per_step = data.cfg.BATCH_SIZE * we.world_size * self.accu_step
            self.max_steps = math.ceil(self.cfg.MAX_EPOCHS * len(data) * self.cfg.NUM_FOLDS / per_step)

    def construct_model(self) -> None:
        self.model = MODELS.build(self.cfg.MODEL, logger=self.logger)
        if self.cfg.TUNER:  # adapters go in before DDP wrapping and before the optimizer sees parameters
            from ..tuners import apply_tuners
            self.model = apply_tuners(self.model, self.cfg.TUNER, self.logger)

    def construct_metrics(self) -> None:
        self.metrics = [METRICS.build(m, logger=self.logger) for m in self.cfg.METRICS or []]

    def construct_hooks(self) -> None:
        for stage, key in (('train', 'TRAIN_HOOKS'), ('eval', 'EVAL_HOOKS'), ('test', 'TEST_HOOKS')):
            hooks = [HOOKS.build(h, logger=self.logger) for h in self.cfg[key] or []]
            self.hooks[stage] = sorted(hooks, key=lambda h: h.priority)

    @property
    def unwrapped_model(self) -> torch.nn.Module:
        return getattr(self.model, 'module', self.model)

    wrap_model = True  # DDP/FSDP around the model under several processes (Lightning wraps it itself)

    def model_to_device(self) -> None:
        self.model.to(we.device)
        apply_model_fast_paths(self)  # CHANNELS_LAST, COMPILE (fast_paths.py)
        if not we.is_distributed or not self.wrap_model:
            return
        if any(p.requires_grad for p in self.model.parameters()) or self.cfg.USE_FSDP:
            from ..launch import wrap_distributed  # DDP/FSDP start every rank from rank 0's weights
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
        apply_train_fast_paths(self)  # frozen modules in the AMP dtype, CACHE_LATENTS (fast_paths.py)
        opt_cfg = self.cfg.OPTIMIZER
        if self.cfg.RESCALE_LR:
            opt_cfg.LEARNING_RATE *= we.world_size * self.datas['train'].cfg.BATCH_SIZE * self.accu_step
        self.optimizer = OPTIMIZERS.build(opt_cfg, logger=self.logger, parameters=self.trainable_parameters())
        if self.cfg.LR_SCHEDULER:
            self.lr_scheduler = LR_SCHEDULERS.build(self.cfg.LR_SCHEDULER, logger=self.logger,
                                                    optimizer=self.optimizer, total_steps=self.max_steps)
        if self.use_amp and self.dtype == torch.float16:
            self.scaler = torch.amp.GradScaler(we.device.type)
        n_train = sum(p.numel() for p in self.trainable_parameters())
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
                                start_sample=self.total_iter * data.cfg.BATCH_SIZE)

    def batches(self) -> Iterator[dict[str, Any]]:
        """Training batches on the device. The loader iterator is created here, eagerly:
        creating it draws from the global RNG."""
        it = iter(self.train_loader())

        def gen() -> Iterator[dict[str, Any]]:
            for batch in it:
                self.skipped_samples += int(batch.pop('_skipped', 0) or 0)
                yield _to_device(batch, we.device)
        return gen()

    def run_train(self) -> None:
        data_iter = self.batches()
        self.begin_train()
        while self.step < self.max_steps:
            self.call_hooks('before_iter')
            t0 = time.perf_counter()
            batch = next(data_iter)
            self.train_step(batch, t0, time.perf_counter())
        self.call_hooks('after_all_iter')

    def begin_train(self) -> None:
        self.model.train()
        self.call_hooks('before_all_iter')
        if self._resume_state is not None:  # restore RNGs last: loader creation must not shift them
            if self._resume_state['rng'] is not None:
                ckpt.set_rng_state(self._resume_state['rng'])
            else:  # resumed with another world size: fresh streams, not those of step 0 again
                from ..data.samplers import mix_seed
                we.seed_all(mix_seed(self.cfg.SEED, self.step) % 2 ** 31)

    def train_step(self, batch: dict[str, Any], t0: float, t1: float) -> None:
        """One micro-batch: forward, then the hooks (backward, optimizer step, log, checkpoint).
        `t0`/`t1`: when fetching the batch began and ended."""
        with self.autocast():
            self.iter_outputs = self.model(**batch)
        self.total_iter += 1
        self.is_step_end = self.total_iter % self.accu_step == 0
        self.step += int(self.is_step_end)
        self.call_hooks('after_iter')
        self.timing['data'] += t1 - t0
        self.timing['iter'] += time.perf_counter() - t0
        self.timing['samples'] += self.datas['train'].cfg.BATCH_SIZE
        if self.is_step_end and self.cfg.EVAL_INTERVAL and self.step % self.cfg.EVAL_INTERVAL == 0 \
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

    def model_state(self) -> dict[str, torch.Tensor]:
        """The weights a checkpoint keeps (whole, also under FSDP: there all ranks call and
        rank 0 gets them)."""
        if self.is_fsdp:
            from ..fsdp import full_model_state
            sd = full_model_state(self.model)
            if self.cfg.TUNER:
                from ..tuners import tuner_state_dict
                keys = set(tuner_state_dict(self.unwrapped_model, ema=True))
                return {k: v for k, v in sd.items() if k in keys}
        elif self.cfg.TUNER:  # a tuned run saves its adapters only (and the EMA copy's, with USE_EMA)
            from ..tuners import tuner_state_dict
            return tuner_state_dict(self.unwrapped_model, ema=True)
        else:
            sd = self.unwrapped_model.state_dict()
        keep = tuple(self.cfg.SAVE_MODULES or ())
        return {k: v for k, v in sd.items() if not keep or k.startswith(keep)}

    def training_state(self) -> dict[str, Any]:
        """Everything besides the weights that an exact resume needs (all ranks call: the RNG
        states of every rank are gathered, FSDP gathers the optimizer state)."""
        from ..dist import all_gather
        hooks = {f'{i}:{type(h).__name__}': h.state_dict() for i, h in enumerate(self.hooks.get('train', []))}
        optimizer = self.optimizer.state_dict() if self.optimizer else None
        if self.is_fsdp:
            from ..fsdp import full_optimizer_state, full_tensors
            optimizer = full_optimizer_state(self.model, self.optimizer) if self.optimizer else None
            hooks = full_tensors(hooks)
        rng = ckpt.rng_state()
        return {
            'step': self.step, 'total_iter': self.total_iter, 'epoch': self.epoch,
            'optimizer': optimizer, 'optimizer_by_name': self.is_fsdp,
            'lr_scheduler': self.lr_scheduler.state_dict() if self.lr_scheduler else None,
            'scaler': self.scaler.state_dict() if self.scaler else None,
            'hooks': hooks, 'skipped_samples': self.skipped_samples, 'world_size': we.world_size,
            'rng': rng, 'rng_per_rank': all_gather(rng) if we.is_distributed else [rng],
        }

    def save_checkpoint(self, with_state: bool = True) -> Path | None:
        """Write the checkpoint tree for the current step. All ranks call (FSDP gathers the
        weights); rank 0 writes; nobody goes on before it is on disk."""
        weights = self.model_state()
        state = self.training_state() if with_state else None
        out = self.work_dir / 'checkpoints' / ckpt.step_dir_name(self.step)
        if we.is_main:
            ckpt.write_checkpoint(out.parent, self.step, weights, state, Config(self.cfg_root or {}).to_yaml(),
                                  metadata=self.checkpoint_metadata())
        self.last_checkpoint = str(out)  # on every rank: hooks decide from it, all ranks alike
        from ..dist import barrier
        barrier()
        return out

    cfg_root: Config | None = None  # the whole recipe, saved beside each checkpoint

    def checkpoint_metadata(self) -> dict[str, str]:
        """safetensors metadata of the weights: a tuned run's adapter configs and base-model
        hash, so that its checkpoint loads as an adapter file anywhere."""
        if not self.cfg.TUNER:
            return {}
        from ..tuners import adapter_metadata
        return adapter_metadata(self.unwrapped_model)

    def load_checkpoint(self, checkpoint: str) -> None:
        step_dir = ckpt.resolve_checkpoint(checkpoint, self.work_dir)
        from ..checkpoint import load_into, load_state_dict
        if self.is_fsdp:  # each rank reads the whole file and keeps its shard
            from ..fsdp import load_full_model_state
            report = load_full_model_state(self.model, load_state_dict(step_dir / ckpt.WEIGHTS))
        else:
            report = load_into(self.unwrapped_model, load_state_dict(step_dir / ckpt.WEIGHTS), logger=self.logger)
        self.logger.info(f'resumed weights from {step_dir}: {report}')
        state = None if self.cfg.LOAD_MODEL_ONLY else ckpt.read_training_state(step_dir)
        if state is None:
            return
        self.step, self.total_iter, self.epoch = state['step'], state['total_iter'], state['epoch']
        if state['world_size'] != we.world_size:  # keep the number of samples seen, not the iteration count
            self.total_iter = self.total_iter * state['world_size'] // we.world_size
        if self.optimizer is not None and state.get('optimizer_by_name'):  # written under FSDP
            from ..fsdp import load_full_optimizer_state
            load_full_optimizer_state(self.model, self.optimizer, state['optimizer'])
        for obj, key in ((self.optimizer, 'optimizer'), (self.lr_scheduler, 'lr_scheduler'), (self.scaler, 'scaler')):
            if obj is not None and state.get(key) is not None and not (key == 'optimizer' and state.get('optimizer_by_name')):
                obj.load_state_dict(state[key])
        hooks = state['hooks']
        if self.is_fsdp:  # saved whole: shard what belongs to sharded parameters (EMA shadows)
            from ..fsdp import shard_like
            hooks = shard_like(hooks, self.model)
        for i, hook in enumerate(self.hooks.get('train', [])):
            hook.load_state_dict(hooks.get(f'{i}:{type(hook).__name__}', {}))
        self.skipped_samples = state.get('skipped_samples', 0)
        # Each rank continues its own random streams; with another world size the ranks get
        # fresh ones (seeded from the step), and only the data position carries over.
        per_rank = state.get('rng_per_rank') or [state['rng']]
        same_world = state['world_size'] == we.world_size and len(per_rank) == we.world_size
        self._resume_state = {**state, 'rng': per_rank[we.rank] if same_world else None}
        self.last_checkpoint = str(step_dir)
        self.logger.info(f'resuming at step {self.step} from {step_dir}')

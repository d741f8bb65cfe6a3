"""LatentDiffusionSolver: trains any network whose forward_train returns a loss, and
evaluates/tests text-to-image networks by sampling prompts and scoring the images."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import torch

from ..config import Config
from ..env import we
from ..registry import SOLVERS
from ..sample_args import default_sample_args, sample_kwargs
from ..utils.images import make_grid, save_png
from ..utils.progress import progress_bar
from .base import BaseSolver

def _on_cpu(output: dict[str, Any]) -> dict[str, Any]:
    return {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in output.items()}


@SOLVERS.register_class()
class LatentDiffusionSolver(BaseSolver):
    """Step-based training with hooks; eval/test sample prompts, save grids and compute metrics."""

    para_dict = {
        'SAMPLE_ARGS': {'value': default_sample_args(),
                        'description': 'Sampling settings for probes, eval and test (forward_test arguments).'},
        'MAX_EVAL_SAMPLES': {'value': None, 'type': int, 'description': 'Cap the number of eval prompts per run.'},
    }

    def __init__(self, cfg: Config | dict, logger: logging.Logger | None = None, mode: str = 'train'):
        super().__init__(cfg, logger, mode)
        self.eval_outputs: list[dict[str, Any]] = []
        self._recipe = self.cfg.deepcopy()  # as given: building the parts fills and changes their blocks

    def begin_train(self) -> None:
        if we.is_main:
            self.log_memory_plan()
        super().begin_train()  # last: it restores the RNG state

    def log_memory_plan(self) -> None:
        """The planned peak memory of a flow-transformer run (the table `scepter model info --cfg`
        prints), one log block; other networks have no plan."""
        from ..models.memory_plan import TEXT_FAMILY, recipe_plan_lines
        if ((self._recipe.get('MODEL') or {}).get('DIFFUSION_MODEL') or {}).get('NAME') not in TEXT_FAMILY:
            return
        try:
            lines = recipe_plan_lines(self._recipe)
        except Exception as e:  # noqa: BLE001 - a plan that cannot be made must not stop the run it describes
            self.logger.warning(f'memory plan not made: {type(e).__name__}: {e}')
            return
        self.logger.info('\n'.join(lines))

    @property
    def sample_args(self) -> dict[str, Any]:
        return sample_kwargs(self.cfg.SAMPLE_ARGS)

    @torch.no_grad()
    def generate(self, prompts: list[str], **overrides: Any) -> list[dict[str, Any]]:
        """Sample images for prompts with SAMPLE_ARGS (eval mode, then back to the previous mode)."""
        model = self.unwrapped_model
        was_training = model.training
        model.eval()
        try:
            with self.autocast():
                return model.forward_test(prompt=list(prompts), **{**self.sample_args, **overrides})
        finally:
            model.train(was_training)

    def generate_on_ranks(self, prompts: list[str], **overrides: Any) -> list[dict[str, Any]] | None:
        """Each rank samples its share of `prompts` (positions rank, rank + W, ...); rank 0
        gets every output in prompt order (images on the CPU), the other ranks None."""
        from ..dist import gather_to_main, shard, unshard
        mine = shard(prompts)
        if mine:
            outs = [_on_cpu(o) for o in self.generate(mine, **overrides)]
        else:
            outs = []
            if self.is_fsdp:  # a sharded model needs every rank in each forward
                self.generate(prompts[:1], **overrides)
        gathered = gather_to_main(outs)
        return unshard(gathered) if gathered is not None else None

    def _run_prompts(self, mode: str, out_dir: Path) -> dict[str, float]:
        """Generate for every item of the mode's data (each rank its shard), update metrics
        (torchmetrics syncs them over ranks); rank 0 gathers and saves PNGs and a grid."""
        loader_data = self.datas[mode]
        from ..data.loader import build_dataloader
        from ..dist import gather_to_main, max_over_ranks, unshard
        loader = build_dataloader(loader_data, seed=self.cfg.SEED, rank=we.rank, world_size=we.world_size)
        for m in self.metrics:
            m.to(we.device)
            m.reset()
        limit = self.cfg.MAX_EVAL_SAMPLES if mode == 'eval' else None
        n_batches = len(loader)
        if limit:
            n_batches = min(n_batches, math.ceil(math.ceil(limit / we.world_size) / loader_data.cfg.BATCH_SIZE))
        # Under FSDP every rank must run the same number of forwards: short shards repeat a batch.
        rounds = max_over_ranks(n_batches) if self.is_fsdp else n_batches
        outputs: list[dict[str, Any]] = []
        batches = iter(loader)
        prompts = ['']
        with progress_bar(rounds, f'{mode} sampling', enabled=we.is_main) as advance:
            for i in range(rounds):
                if i >= n_batches:  # FSDP padding: a forward whose images nobody keeps
                    self.generate(prompts)
                    continue
                batch = next(batches)
                batch.pop('_skipped', None)
                prompts = list(batch['prompt'])
                outs = self.generate(prompts)
                images = torch.stack([o['image'] for o in outs]).to(we.device)
                refs = batch.get('image')
                refs = ((refs.to(we.device).float() + 1) / 2).clamp(0, 1) if isinstance(refs, torch.Tensor) else None
                for m in self.metrics:
                    m.update(images, prompts=prompts, references=refs)
                outputs += [_on_cpu(o) for o in outs]
                advance(1)
        values = {}
        for m in self.metrics:
            values.update({k: float(v) for k, v in m.compute().items()})
        gathered = gather_to_main(outputs)
        self.eval_outputs = unshard(gathered)[:limit or None] if gathered is not None else outputs
        if we.is_main:
            self._write_outputs(out_dir, values)
        return values

    def _write_outputs(self, out_dir: Path, values: dict[str, float]) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        meta = []
        for i, o in enumerate(self.eval_outputs):
            name = f'{i:05d}.png'
            save_png(o['image'], out_dir / name)
            meta.append({'file': name, 'prompt': o['prompt'], 'n_prompt': o.get('n_prompt', '')})
        if self.eval_outputs:
            grid = make_grid([o['image'] for o in self.eval_outputs[:64]], [o['prompt'] for o in self.eval_outputs[:64]])
            grid.save(out_dir / 'grid.png')
        (out_dir / 'samples.json').write_text(json.dumps(meta, indent=1))
        (out_dir / 'metrics.json').write_text(json.dumps({'step': self.trained_step(), **values}, indent=2))

    def trained_step(self) -> int:
        """Steps behind the weights: this run's, or those recorded in the loaded checkpoint
        (a trained adapter's when SOLVER.TUNER is a path, else the model's)."""
        source = self.cfg.TUNER if isinstance(self.cfg.TUNER, str) else (self.cfg.MODEL or {}).get('PRETRAINED_MODEL')
        if self.step or not source:
            return self.step
        from ..checkpoint import checkpoint_step
        return checkpoint_step(source) or 0

    def run_eval(self) -> None:
        if 'eval' not in self.datas:
            return
        values = self._run_prompts('eval', self.work_dir / 'eval' / f'step-{self.step:06d}')
        self.state.metric_values = values
        if values:
            self.logger.info(f'eval step {self.step}: ' + ', '.join(f'{k} {v:.4f}' for k, v in values.items()))
        self.call_hooks('after_iter', which='eval')
        self.call_hooks('after_eval')

    def run_test(self) -> None:
        values = self._run_prompts('test', self.work_dir / 'test')
        self.state.metric_values = values
        self.call_hooks('after_iter', which='test')
        self.logger.info(f"test: {len(self.eval_outputs)} images in {self.work_dir / 'test'}")


__all__ = ['LatentDiffusionSolver', 'sample_kwargs']

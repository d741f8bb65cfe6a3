"""A registered network and recipe small enough that a whole training run takes a second:
`TinyNet` regresses each 16 px shape image's mean brightness from a pooled, noised copy
(the noise makes seeds matter, as in diffusion); `forward_test` paints one image per prompt."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from scepter_core.config import Config
from scepter_core.launch import run_worker
from scepter_core.models.base import TrainModule
from scepter_core.registry import MODELS
from tests.e2e.conftest import TO_TENSOR


class TinyNet(TrainModule):
    para_dict = {'WIDTH': {'value': 8, 'description': 'Hidden width.'},
                 'NOISE': {'value': 0.05, 'description': 'Std of the noise added to the input.'},
                 'NAN_CALLS': {'value': [], 'description': 'forward_train calls (from 1) whose loss is NaN.'}}

    def __init__(self, cfg=None, logger=None):
        super().__init__(cfg, logger=logger)
        self.body = nn.Linear(12, self.cfg.WIDTH)
        self.head = nn.Linear(self.cfg.WIDTH, 1)
        self.register_buffer('calls', torch.zeros((), dtype=torch.long))  # saved: a resume goes on counting

    def forward_train(self, image: torch.Tensor, **kwargs: Any) -> dict[str, torch.Tensor]:
        self.calls += 1
        x = nn.functional.avg_pool2d(image.float(), 8).flatten(1)
        pred = self.head(nn.functional.silu(self.body(x + self.cfg.NOISE * torch.randn_like(x)))).squeeze(1)
        loss = (pred - image.float().mean(dim=(1, 2, 3))).pow(2).mean()
        if int(self.calls) in self.cfg.NAN_CALLS:
            loss = loss * float('nan')
        return {'loss': loss, 'probe_data': {'prompt': kwargs.get('prompt', [])}}

    @torch.no_grad()
    def forward_test(self, prompt: list[str], **kwargs: Any) -> list[dict[str, Any]]:
        level = torch.sigmoid(self.head.bias).item()
        return [{'image': torch.full((3, 16, 16), level), 'prompt': p} for p in prompt]


if 'TinyNet' not in MODELS:
    MODELS.register_class()(TinyNet)


def tiny_net_recipe(work: Path, steps: int = 3, hooks: list[dict] | None = None, **solver: Any) -> Config:
    """SGD without momentum (so accumulation and batch size compare exactly) on 32 shapes."""
    return Config({'ENV': {'SEED': 3}, 'SOLVER': {
        'NAME': 'LatentDiffusionSolver', 'WORK_DIR': str(work), 'MAX_STEPS': steps, 'SEED': 3,
        'MODEL': {'NAME': 'TinyNet'}, 'OPTIMIZER': {'NAME': 'SGD', 'LEARNING_RATE': 0.5, 'MOMENTUM': 0.0},
        'TRAIN_DATA': {'NAME': 'ShapesDataset', 'IMAGE_SIZE': 16, 'NUM_SAMPLES': 32, 'BATCH_SIZE': 4,
                       'TRANSFORMS': TO_TENSOR},
        'SAMPLE_ARGS': {'IMAGE_SIZE': [16, 16], 'SAMPLE_STEPS': 1},
        'TRAIN_HOOKS': list(hooks or []), **solver}})


def train_tiny(work: Path, steps: int = 3, hooks: list[dict] | None = None, **solver: Any) -> Any:
    """Train TinyNet in this process; returns the solver."""
    return run_worker(tiny_net_recipe(work, steps, hooks, **solver), 'train')


def weights(solver: Any) -> dict[str, torch.Tensor]:
    """The trained tensors (not the call counter)."""
    return {k: v.detach().clone() for k, v in solver.unwrapped_model.state_dict().items() if k != 'calls'}

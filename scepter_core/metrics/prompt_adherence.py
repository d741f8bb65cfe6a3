"""Prompt adherence on the built-in shapes dataset: does each generated image show
the colour, shape and background its prompt asks for? A deterministic scorer reads
the image, so the value rises as the tiny default model learns."""
from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from ..config import Config
from ..registry import METRICS
from .base import BaseMetric

PARTS = ('color', 'shape', 'background')
# Reported key -> the scorer's verdict it averages ('all': every verdict true).
ATTRIBUTES = {'prompt_color_acc': 'color', 'prompt_shape_acc': 'shape',
              'prompt_bg_acc': 'background', 'prompt_all_acc': 'all'}


@METRICS.register_class()
class PromptAdherence(BaseMetric):
    """Fraction of images whose colour / shape / background match their prompt, and
    whose every attribute does; reports the keys of ATTRIBUTES."""

    needs_prompts = True

    def __init__(self, cfg: Config | dict | None = None, logger: logging.Logger | None = None):
        super().__init__(cfg, logger=logger)
        # MeanMetric states sum across ranks, so the accuracy is over every rank's images.
        from torchmetrics import MeanMetric  # at use: a slow import
        self.means = nn.ModuleDict({key: MeanMetric() for key in ATTRIBUTES})

    def _update(self, images: Tensor, prompts: list[str] | None, references: Tensor | None) -> None:
        from ..data.shapes import score_image  # at use: importing metrics must not pull in the data package
        verdicts = [score_image(image, prompt) for image, prompt in zip(images.cpu(), prompts)]
        for key, attribute in ATTRIBUTES.items():
            hits = [all(v[a] for a in PARTS) if attribute == 'all' else bool(v[attribute]) for v in verdicts]
            self.means[key].update(torch.tensor(hits, dtype=torch.float32, device=self.means[key].device))

    def _compute(self) -> dict[str, Tensor]:
        return {key: mean.compute() for key, mean in self.means.items()}

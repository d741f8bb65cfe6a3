"""The protocol every metric follows, held once.

The solver calls `update(images, prompts=None, references=None)` per batch,
`compute() -> dict[str, float]` once at the end (on every rank; torchmetrics
gathers the states across ranks) and `reset()` before the next evaluation."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import Tensor
from ..config import Config
from ..errors import ScepterError
from ..models.base import TrainModule

if TYPE_CHECKING:  # torchmetrics is imported at use: it takes seconds (scepter registry list)
    from torchmetrics import Metric  # noqa: F401

# Images a little outside [0, 1] come from float rounding; far outside means [-1, 1] input.
_RANGE_SLACK = 1e-3


class BaseMetric(TrainModule):
    """A registered metric over generated images in [0, 1]. Subclasses build their
    torchmetrics objects in `__init__` and implement `_update` and `_compute`."""

    para_dict = {
        'PREFIX': {'value': '', 'type': str,
                   'description': 'prepended to every reported key, e.g. "val_" reports val_fid'},
    }
    needs_prompts = False
    needs_references = False

    def __init__(self, cfg: Config | dict | None = None, logger: logging.Logger | None = None):
        super().__init__(cfg, logger=logger)
        name = type(self).__name__
        self.where = self.cfg.path or name  # prefix of config keys in errors
        self.label = f'{self.cfg.path} ({name})' if self.cfg.path else name  # the metric in errors

    def train(self, mode: bool = True) -> 'BaseMetric':
        # Feature networks hold batch norms: a metric is never in training mode.
        return super().train(False)

    @torch.no_grad()
    def update(self, images: Tensor, prompts: list[str] | None = None,
               references: Tensor | None = None) -> None:
        """Add one batch: generated `images` [B, 3, H, W] in [0, 1], their `prompts`
        and, for metrics that compare, the `references` they should match."""
        images = self._checked_images(images, 'images')
        if self.needs_references:
            if references is None:
                raise ScepterError(f'{self.label} compares against reference images, but the batch '
                                   'has none (the test data must provide images)')
            references = self._checked_images(references, 'references')
        if self.needs_prompts:
            if prompts is None or len(prompts) != images.shape[0]:
                got = 'none' if prompts is None else len(prompts)
                raise ScepterError(f'{self.label} needs one prompt per image '
                                   f'({images.shape[0]} images, prompts: {got})')
        self._update(images, prompts, references)

    def compute(self) -> dict[str, float]:
        """The accumulated values, keyed `PREFIX + name` (e.g. `{'fid': 12.3}`)."""
        # Under DDP a rank may get no batch; torchmetrics still gathers the others' states.
        from torchmetrics import Metric
        alone = not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1)
        if alone and not any(m.update_called for m in self.modules() if isinstance(m, Metric)):
            raise ScepterError(f'{self.label}: nothing to compute, no batch was given to update()')
        try:
            values = self._compute()
        except ScepterError:
            raise
        except (RuntimeError, ValueError) as e:
            raise ScepterError(f'{self.label} cannot be computed: {e}') from e
        return {f'{self.cfg.PREFIX}{key}': float(value) for key, value in values.items()}

    def reset(self) -> None:
        from torchmetrics import Metric
        for module in self.modules():
            if isinstance(module, Metric):
                module.reset()

    def _checked_images(self, x: Any, name: str) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != 3:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ScepterError(f'{self.label}: {name} must be a [B, 3, H, W] tensor, got {shape}')
        x = x.float()
        lo, hi = x.min().item(), x.max().item()
        if lo < -_RANGE_SLACK or hi > 1 + _RANGE_SLACK:
            raise ScepterError(f'{self.label}: {name} must lie in [0, 1], got values in '
                               f'[{lo:.3g}, {hi:.3g}] (map [-1, 1] images with (x + 1) / 2)')
        return x.clamp(0, 1)

    def _update(self, images: Tensor, prompts: list[str] | None, references: Tensor | None) -> None:
        raise NotImplementedError

    def _compute(self) -> dict[str, Tensor | float]:
        raise NotImplementedError

"""Built-in metrics; importing this package registers them.

Every metric follows one protocol (`BaseMetric`): `update(images, prompts=None,
references=None)` with images [B, 3, H, W] in [0, 1], `compute() -> dict[str, float]`,
`reset()`. Values come from torchmetrics, which also gathers them across ranks."""
from . import clip_score, features, fid, prompt_adherence, reconstruction  # noqa: F401
from .base import BaseMetric

__all__ = ['BaseMetric']

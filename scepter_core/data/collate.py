"""Collation: a list of item dicts -> one batch dict (stacked tensors, lists of the rest)."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import ScepterError
from .base import BAD_PATHS_KEY, SKIPPED_KEY


def _stack(key: str, values: list) -> Any:
    first = values[0]
    if isinstance(first, torch.Tensor):
        shapes = {tuple(v.shape) for v in values}
        if len(shapes) > 1:
            raise ScepterError(f"batch key '{key}' holds tensors of different shapes {sorted(shapes)}: "
                               f"add Resize/CenterCrop so every sample has the same size")
        return torch.stack(values)
    if isinstance(first, np.ndarray):
        return _stack(key, [torch.tensor(v) for v in values])
    if isinstance(first, (bool, int, float)) and all(type(v) is type(first) for v in values):
        return torch.tensor(values)
    return list(values)


def collate(items: list[dict]) -> dict[str, Any]:
    """Tensors are stacked, numbers become a tensor, strings and other values a list,
    'meta' a dict of lists; `_skipped` is summed and `_bad_paths` concatenated."""
    batch: dict[str, Any] = {}
    for key in items[0]:
        values = [item[key] for item in items]
        if key == SKIPPED_KEY:
            batch[key] = int(sum(values))
        elif key == BAD_PATHS_KEY:
            batch[key] = [p for paths in values for p in paths]
        elif key == 'meta':
            batch[key] = {k: [m.get(k) for m in values] for k in values[0]}
        else:
            batch[key] = _stack(key, values)
    return batch


def to_device(batch: Any, device: torch.device) -> Any:
    """A batch (tensors, nested in dicts) on `device`; other values as they are."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch

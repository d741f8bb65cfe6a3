"""PromptAdherence on the built-in shapes dataset's own images (scored by the
dataset's deterministic scorer)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import scepter_core.metrics  # noqa: F401  (registers the metrics)
from scepter_core.errors import ScepterError
from scepter_core.registry import METRICS

KEYS = {'prompt_color_acc', 'prompt_shape_acc', 'prompt_bg_acc', 'prompt_all_acc'}


def _as_unit_tensor(image) -> torch.Tensor:
    """An item's image as [3, H, W] in [0, 1], whether PIL or a tensor in [0, 1] / [-1, 1]."""
    if not isinstance(image, torch.Tensor):
        image = torch.from_numpy(np.asarray(image.convert('RGB'), dtype=np.float32) / 255).permute(2, 0, 1)
    return (image + 1) / 2 if image.min() < 0 else image


def _shapes_batch(n: int) -> tuple[torch.Tensor, list[str]]:
    pytest.importorskip('scepter_core.data.shapes', reason='scepter_core/data/shapes.py is not written yet')
    from scepter_core.registry import DATASETS
    dataset = DATASETS.build({'NAME': 'ShapesDataset', 'NUM_SAMPLES': n, 'IMAGE_SIZE': 64, 'SEED': 0})
    items = [dataset[i] for i in range(n)]
    images = torch.stack([_as_unit_tensor(item.get('image', item.get('img'))) for item in items])
    return images, [item['prompt'] for item in items]


def test_dataset_images_score_perfectly_and_shuffled_prompts_do_not():
    images, prompts = _shapes_batch(24)
    metric = METRICS.build({'NAME': 'PromptAdherence'})
    metric.update(images[:10], prompts=prompts[:10])
    metric.update(images[10:], prompts=prompts[10:])
    values = metric.compute()
    assert set(values) == KEYS
    assert all(v == 1.0 for v in values.values())

    metric.reset()
    metric.update(images, prompts=prompts[1:] + prompts[:1])  # each image gets its neighbour's caption
    shuffled = metric.compute()
    assert shuffled['prompt_all_acc'] < 1.0
    assert shuffled['prompt_all_acc'] <= min(shuffled[k] for k in KEYS - {'prompt_all_acc'})


def test_prompt_adherence_needs_prompts():
    metric = METRICS.build({'NAME': 'PromptAdherence'})
    with pytest.raises(ScepterError, match='one prompt per image'):
        metric.update(torch.rand(2, 3, 16, 16))

"""PSNR, SSIM and MS-SSIM over batches, against torchmetrics' functional versions
on the whole set at once."""
from __future__ import annotations

import pytest
import torch
from torchmetrics.functional.image import (multiscale_structural_similarity_index_measure,
                                           peak_signal_noise_ratio, structural_similarity_index_measure)

import scepter_core.metrics  # noqa: F401  (registers the metrics)
from scepter_core.errors import ScepterError
from scepter_core.registry import METRICS

BETAS = [0.3, 0.3, 0.4]  # three scales fit 48-pixel images with a 7-pixel window


def _pairs(n: int = 6, size: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    references = torch.rand(n, 3, size, size, generator=g)
    noise = torch.randn(n, 3, size, size, generator=g) * torch.linspace(0.02, 0.2, n).view(n, 1, 1, 1)
    return (references + noise).clamp(0, 1), references


def _batched(cfg: dict, images: torch.Tensor, references: torch.Tensor) -> dict:
    metric = METRICS.build(cfg)
    for i in range(0, len(images), 4):  # uneven batches: 4 then 2
        metric.update(images[i:i + 4], references=references[i:i + 4])
    return metric.compute()


def test_psnr_is_the_mean_per_image_value():
    images, references = _pairs()
    expected = peak_signal_noise_ratio(images, references, data_range=1.0, dim=(1, 2, 3))
    assert _batched({'NAME': 'PSNR'}, images, references)['psnr'] == pytest.approx(expected.item(), rel=1e-5)


def test_ssim_matches_functional():
    images, references = _pairs()
    expected = structural_similarity_index_measure(images, references, data_range=1.0,
                                                   kernel_size=7, sigma=1.0)
    ours = _batched({'NAME': 'SSIM', 'KERNEL_SIZE': 7, 'SIGMA': 1.0}, images, references)
    assert ours['ssim'] == pytest.approx(expected.item(), rel=1e-5)


def test_ms_ssim_matches_functional():
    images, references = _pairs()
    expected = multiscale_structural_similarity_index_measure(images, references, data_range=1.0,
                                                              kernel_size=7, betas=tuple(BETAS))
    ours = _batched({'NAME': 'MS_SSIM', 'KERNEL_SIZE': 7, 'BETAS': BETAS}, images, references)
    assert ours['ms_ssim'] == pytest.approx(expected.item(), rel=1e-5)


def test_closer_reconstructions_score_better():
    images, references = _pairs()
    for name, key in (('PSNR', 'psnr'), ('SSIM', 'ssim')):
        metric = METRICS.build({'NAME': name})
        values = []
        for i in (0, 5):  # least and most noisy pair
            metric.reset()
            metric.update(images[i:i + 1], references=references[i:i + 1])
            values.append(metric.compute()[key])
        assert values[0] > values[1]


def test_reconstruction_needs_references():
    with pytest.raises(ScepterError, match='reference images'):
        METRICS.build({'NAME': 'SSIM'}).update(torch.rand(1, 3, 16, 16))

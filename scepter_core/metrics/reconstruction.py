"""Reconstruction quality (first-stage autoencoders): images against their references,
both in [0, 1]. Each value is the mean over images."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from torch import Tensor

from ..config import Config
from ..registry import METRICS
from .base import BaseMetric

if TYPE_CHECKING:  # torchmetrics is imported at use: it takes seconds (scepter registry list)
    from torchmetrics import Metric

DATA_RANGE = 1.0  # the protocol hands images in [0, 1]


class PairedImageMetric(BaseMetric):
    """A torchmetrics metric over (images, references) pairs, reported as `key`."""

    needs_references = True
    key = ''

    def __init__(self, cfg: Config | dict | None = None, logger: logging.Logger | None = None):
        super().__init__(cfg, logger=logger)
        self.metric = self.make_metric()

    def make_metric(self) -> Metric:
        raise NotImplementedError

    def _update(self, images: Tensor, prompts: list[str] | None, references: Tensor | None) -> None:
        self.metric.update(images, references)

    def _compute(self) -> dict[str, Tensor]:
        return {self.key: self.metric.compute()}


@METRICS.register_class()
class PSNR(PairedImageMetric):
    """Peak signal-to-noise ratio in dB, per image, averaged; reports `psnr`."""

    key = 'psnr'

    def make_metric(self) -> Metric:
        # A running mean of torchmetrics' per-image PSNR: sum states, which gather across ranks
        # even when a rank got no batch (PeakSignalNoiseRatio's per-image list states do not).
        from torchmetrics import MeanMetric
        return MeanMetric()

    def _update(self, images: Tensor, prompts: list[str] | None, references: Tensor | None) -> None:
        from torchmetrics.functional.image import peak_signal_noise_ratio
        self.metric.update(peak_signal_noise_ratio(images, references, data_range=DATA_RANGE,
                                                   dim=(1, 2, 3), reduction='none'))


class GaussianWindowMetric(PairedImageMetric):
    """SSIM-family metrics share the Gaussian window."""

    para_dict = {
        'KERNEL_SIZE': {'value': 11, 'description': 'side of the Gaussian window (odd)'},
        'SIGMA': {'value': 1.5, 'description': 'standard deviation of the Gaussian window'},
    }


@METRICS.register_class()
class SSIM(GaussianWindowMetric):
    """Structural similarity; reports `ssim`."""

    key = 'ssim'

    def make_metric(self) -> Metric:
        from torchmetrics.image import StructuralSimilarityIndexMeasure
        return StructuralSimilarityIndexMeasure(data_range=DATA_RANGE, kernel_size=self.cfg.KERNEL_SIZE,
                                                sigma=float(self.cfg.SIGMA))


@METRICS.register_class(aliases=('MS_SSIM', 'MSSSIM'))
class MultiScaleSSIM(GaussianWindowMetric):
    """Multi-scale structural similarity; reports `ms_ssim`. Images must be larger than
    (KERNEL_SIZE - 1) * 2 ** (len(BETAS) - 1) pixels: use fewer BETAS for small images."""

    key = 'ms_ssim'
    para_dict = {
        'BETAS': {'value': [0.0448, 0.2856, 0.3001, 0.2363, 0.1333], 'type': list,
                  'description': 'weight of each scale (one scale per entry, halving the size each time)'},
    }

    def make_metric(self) -> Metric:
        from torchmetrics.image import MultiScaleStructuralSimilarityIndexMeasure
        return MultiScaleStructuralSimilarityIndexMeasure(
            data_range=DATA_RANGE, kernel_size=self.cfg.KERNEL_SIZE, sigma=float(self.cfg.SIGMA),
            betas=tuple(float(b) for b in self.cfg.BETAS))

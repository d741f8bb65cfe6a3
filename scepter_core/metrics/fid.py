"""FID and KID: distances between the feature distributions of generated images
and reference images, computed by torchmetrics over a configurable feature network."""
from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..config import Config
from ..errors import ConfigError
from ..registry import METRICS
from .base import BaseMetric
from .features import INCEPTION_FILES, FrozenFeatures, build_feature_network


if TYPE_CHECKING:  # torchmetrics is imported at use: it takes seconds (scepter registry list)
    from torchmetrics import Metric


class DistributionMetric(BaseMetric):
    """Generated images are the 'fake' set, the batch's references the 'real' one."""

    para_dict = {
        'FEATURE_NETWORK': {'value': None, 'type': dict,
                            'description': 'a BACKBONES or MODELS block mapping images in [0, 1] to [B, D] '
                                           'features (e.g. NAME: RandomConvFeatures); when set, '
                                           'INCEPTION_WEIGHTS is not used'},
        'INCEPTION_WEIGHTS': {'value': None, 'type': str,
                              'description': 'path of the FID Inception-v3 weights '
                                             f'({" or ".join(INCEPTION_FILES)}); never downloaded'},
    }
    needs_references = True

    def __init__(self, cfg: Config | dict | None = None, logger: logging.Logger | None = None):
        super().__init__(cfg, logger=logger)
        features = build_feature_network(self.cfg.FEATURE_NETWORK, self.cfg.INCEPTION_WEIGHTS,
                                         self.where, self.logger)
        self.num_features = features.num_features
        self.metric = self.make_metric(features)

    def make_metric(self, features: FrozenFeatures) -> Metric:
        raise NotImplementedError

    def _update(self, images: Tensor, prompts: list[str] | None, references: Tensor | None) -> None:
        self.metric.update(references, real=True)
        self.metric.update(images, real=False)


@METRICS.register_class(aliases=('FrechetInceptionDistance',))
class FID(DistributionMetric):
    """Frechet distance between Gaussian fits of the two feature sets; reports `fid`."""

    def make_metric(self, features: FrozenFeatures) -> Metric:
        from torchmetrics.image.fid import FrechetInceptionDistance
        metric = FrechetInceptionDistance(feature=features, normalize=True)
        # compute() casts to the dtype update() saw; a rank that got no batch under DDP has none.
        metric.orig_dtype = torch.float32
        return metric

    def _compute(self) -> dict[str, Tensor]:
        return {'fid': self.metric.compute()}


@METRICS.register_class(aliases=('KernelInceptionDistance',))
class KID(DistributionMetric):
    """Polynomial-kernel MMD over random subsets; reports `kid_mean` and `kid_std`."""

    para_dict = {
        'SUBSETS': {'value': 100, 'description': 'number of random subsets averaged'},
        'SUBSET_SIZE': {'value': 1000, 'description': 'images per subset; at most the number of images'},
        'DEGREE': {'value': 3, 'description': 'degree of the polynomial kernel'},
        'GAMMA': {'value': None, 'type': float, 'description': 'kernel scale; None means 1 / feature size'},
        'COEF': {'value': 1.0, 'description': 'constant term of the kernel'},
        'SEED': {'value': 0, 'description': 'seed of the subset draws, so every rank and run agrees'},
    }

    def make_metric(self, features: FrozenFeatures) -> Metric:
        gamma = None if self.cfg.GAMMA is None else float(self.cfg.GAMMA)
        with warnings.catch_warnings():  # its note that features are kept in memory is by design
            warnings.filterwarnings('ignore', message='Metric `Kernel Inception Distance`')
            from torchmetrics.image.kid import KernelInceptionDistance
            return KernelInceptionDistance(feature=features, subsets=self.cfg.SUBSETS,
                                           subset_size=self.cfg.SUBSET_SIZE, degree=self.cfg.DEGREE,
                                           gamma=gamma, coef=float(self.cfg.COEF), normalize=True)

    def _pack_features(self) -> None:
        # torchmetrics gathers these list states one tensor at a time across ranks: hold exactly
        # one tensor per state, so ranks with different numbers of batches (or none) stay in step.
        for name in ('real_features', 'fake_features'):
            parts = getattr(self.metric, name)
            empty = torch.zeros(0, self.num_features, device=self.metric.device)
            setattr(self.metric, name, [torch.cat(parts) if parts else empty])

    def _compute(self) -> dict[str, Tensor]:
        self._pack_features()
        # torchmetrics draws subsets from the global RNG: fix it so all ranks report the same value.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.SEED)
            try:
                mean, std = self.metric.compute()
            except ValueError as e:
                raise ConfigError(f"'{self.where}.SUBSET_SIZE': {self.cfg.SUBSET_SIZE} is more than the "
                                  'number of images evaluated; lower it') from e
        return {'kid_mean': mean, 'kid_std': std}

"""Feature networks for distribution metrics (FID, KID).

A feature network maps images [B, 3, H, W] in [0, 1] to features [B, D]. Any
BACKBONES or MODELS entry that does so can be named in a metric's FEATURE_NETWORK
block; two are built in: the FID Inception-v3 (weights from a local file) and a
seeded random convolution stack for tests and offline smoke checks."""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checkpoint import load_state_dict
from ..config import Config
from ..errors import CheckpointError, ConfigError, RegistryError, ScepterError
from ..fs import FS
from ..models.base import TrainModule
from ..registry import BACKBONES, MODELS, Registry
from .inception import FEATURE_DIMS, INPUT_SIZE, FIDInceptionV3

INCEPTION_FILES = ('pt_inception-2015-12-05-6726825d.pth', 'weights-inception-2015-12-05-6726825d.pth')
# Probe size for networks that do not declare `num_features`.
_PROBE_SIZE = 64


def local_inception_weights(path: str | None, key: str) -> str:
    """The local file for the Inception weights at `path`; `key` names the config key in errors."""
    files = ' or '.join(f"'{n}'" for n in INCEPTION_FILES)
    if not path:
        raise ConfigError(f'{key} is not set: give the path of the FID Inception-v3 weights ({files}, '
                          'from the torch-fidelity or pytorch-fid releases); nothing is downloaded at run time')
    try:
        return str(FS.get_from(path))
    except FileNotFoundError as e:
        raise CheckpointError(f"{key}: '{path}' not found: place the FID Inception-v3 weights ({files}) "
                              'there; nothing is downloaded at run time') from e


@BACKBONES.register_class()
class InceptionV3Features(TrainModule):
    """Pooled Inception-v3 activations, with torchmetrics' FID input pipeline."""

    para_dict = {
        'WEIGHTS': {'value': None, 'type': str,
                    'description': f'path of the FID Inception-v3 weights ({" or ".join(INCEPTION_FILES)})'},
        'FEATURE_DIM': {'value': 2048, 'choices': FEATURE_DIMS,
                        'description': 'which pooled activations to return; 2048 is the standard for FID'},
    }

    def __init__(self, cfg: Config | dict | None = None, logger: logging.Logger | None = None):
        super().__init__(cfg, logger=logger)
        where = self.cfg.path or type(self).__name__
        path = local_inception_weights(self.cfg.WEIGHTS, f'{where}.WEIGHTS')
        self.num_features = self.cfg.FEATURE_DIM
        self.net = FIDInceptionV3()
        state = {k: v for k, v in load_state_dict(path).items() if not k.endswith('num_batches_tracked')}
        missing, unexpected = self.net.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise CheckpointError(f"'{path}' is not an FID Inception-v3 weights file: {len(missing)} "
                                  f'missing keys (e.g. {missing[:3]}), {len(unexpected)} unexpected '
                                  f'(e.g. {unexpected[:3]})')
        self.freeze()

    def forward(self, images: Tensor) -> Tensor:
        # As torchmetrics' FID with normalize=True: 8-bit quantisation (truncating), an
        # antialiased bilinear resize to 299, then [0, 255] -> [-1, 1].
        x = (images * 255).to(torch.uint8).float()
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode='bilinear', align_corners=False,
                          antialias=True)
        return self.net.features((x - 128) / 128, self.num_features)


@BACKBONES.register_class()
class RandomConvFeatures(TrainModule):
    """A fixed random convolution stack (weights drawn from SEED). Not a perceptual
    measure: it makes FID/KID runnable offline and in tests without any weights file."""

    para_dict = {
        'SEED': {'value': 0, 'description': 'seed the weights are drawn from'},
        'FEATURE_DIM': {'value': 64, 'description': 'size of the returned feature vector'},
        'WIDTH': {'value': 16, 'description': 'channels of the convolutions'},
        'RESOLUTION': {'value': 32, 'description': 'images are resized to this square size first'},
    }

    def __init__(self, cfg: Config | dict | None = None, logger: logging.Logger | None = None):
        super().__init__(cfg, logger=logger)
        width = self.cfg.WIDTH
        self.num_features = self.cfg.FEATURE_DIM
        # Draw from a private generator state so building a metric never moves the global RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.SEED)
            self.body = nn.Sequential(
                nn.Conv2d(3, width, 3, stride=2, padding=1), nn.GELU(),
                nn.Conv2d(width, width * 2, 3, stride=2, padding=1), nn.GELU(),
                nn.Conv2d(width * 2, width * 2, 3, padding=1), nn.GELU(),
            )
            self.head = nn.Linear(width * 2, self.num_features)
            for layer in (*self.body, self.head):
                if isinstance(layer, (nn.Conv2d, nn.Linear)):
                    # He-scaled weights keep the features O(1), so distances read on a usual scale.
                    fan_in = layer.weight[0].numel()
                    nn.init.normal_(layer.weight, std=(2 / fan_in) ** 0.5)
                    nn.init.zeros_(layer.bias)
        self.freeze()

    def forward(self, images: Tensor) -> Tensor:
        size = self.cfg.RESOLUTION
        x = F.interpolate(images * 2 - 1, size=(size, size), mode='bilinear', align_corners=False,
                          antialias=True)
        return self.head(self.body(x).mean(dim=(2, 3)))


class FrozenFeatures(nn.Module):
    """Wraps a feature network for torchmetrics: always eval, no gradients, [B, D]
    output, and a `num_features` so torchmetrics does not probe it at 299x299."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net.eval().requires_grad_(False)
        num = getattr(net, 'num_features', None)
        if not isinstance(num, int):
            with torch.no_grad():
                num = self.forward(torch.zeros(1, 3, _PROBE_SIZE, _PROBE_SIZE)).shape[-1]
        self.num_features = int(num)

    def train(self, mode: bool = True) -> 'FrozenFeatures':
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        out = self.net(images)
        if not isinstance(out, Tensor):
            raise ScepterError(f'feature network {type(self.net).__name__} returned '
                               f'{type(out).__name__}, expected a [B, D] tensor')
        return out.flatten(1).float()


def _feature_registry(name: str, where: str) -> Registry:
    for reg in (BACKBONES, MODELS):
        try:
            reg.get(name)
            return reg
        except RegistryError:
            continue
    raise ConfigError(f"'{where}.NAME': '{name}' is neither a BACKBONES nor a MODELS entry")


def build_feature_network(block: dict | None, inception_weights: str | None, where: str,
                          logger: logging.Logger | None = None) -> FrozenFeatures:
    """The network named by `block` (a BACKBONES/MODELS block), else the FID Inception-v3
    loaded from `inception_weights`. `where` is the metric's config path, for errors."""
    if block:
        block = block if isinstance(block, Config) else Config(block)
        if 'NAME' not in block:
            raise ConfigError(f"'{where}.FEATURE_NETWORK': block has no NAME")
        reg = _feature_registry(block['NAME'], f'{where}.FEATURE_NETWORK')
        return FrozenFeatures(reg.build(block, logger=logger))
    path = local_inception_weights(inception_weights, f'{where}.INCEPTION_WEIGHTS')
    return FrozenFeatures(BACKBONES.build({'NAME': 'InceptionV3Features', 'WEIGHTS': path}, logger=logger))

"""Inception-v3 as used for FID: the TensorFlow graph of 2015-12-05.

Module names follow the released PyTorch ports (torch-fidelity's
`weights-inception-2015-12-05-6726825d.pth`, pytorch-fid's
`pt_inception-2015-12-05-6726825d.pth`), so either file loads unchanged. It differs
from torchvision's Inception-v3 where the TF graph does: average pools ignore
padding, and the last block max-pools its pool branch."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

INPUT_SIZE = 299
FEATURE_DIMS = (64, 192, 768, 2048)
NUM_CLASSES = 1008  # the TF graph's classifier; kept so the weights files load strictly


class ConvBN(nn.Module):
    """Convolution without bias, batch norm (TF's epsilon), ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] = 0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _row(cin: int, cout: int, n: int) -> tuple:
    """A 1 x n convolution keeping the size."""
    return (cin, cout, (1, n), 1, (0, n // 2))


def _col(cin: int, cout: int, n: int) -> tuple:
    """An n x 1 convolution keeping the size."""
    return (cin, cout, (n, 1), 1, (n // 2, 0))


class Mixed(nn.Module):
    """One Inception block: parallel chains of convolutions plus a pooling branch,
    concatenated along channels.

    `layers` maps a layer name to ConvBN arguments. A chain lists layer names run in
    order; a tuple as its last step forks into parallel layers that are concatenated.
    `pool` is 'avg' or 'max' (3x3, stride 1, then the `branch_pool` layer) or
    'reduce' (3x3 max pool with stride 2, no layer)."""

    def __init__(self, layers: dict[str, tuple], chains: list[list], pool: str):
        super().__init__()
        for name, args in layers.items():
            self.add_module(name, ConvBN(*args))
        self.chains = chains
        self.pool = pool

    def _chain(self, chain: list, x: Tensor) -> Tensor:
        for step in chain:
            if isinstance(step, tuple):
                return torch.cat([getattr(self, name)(x) for name in step], 1)
            x = getattr(self, step)(x)
        return x

    def _pool_branch(self, x: Tensor) -> Tensor:
        if self.pool == 'reduce':
            return F.max_pool2d(x, 3, stride=2)
        if self.pool == 'avg':
            x = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
        else:
            x = F.max_pool2d(x, 3, stride=1, padding=1)
        return self.branch_pool(x)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self._chain(c, x) for c in self.chains] + [self._pool_branch(x)], 1)


def block_a(cin: int, pool_features: int) -> Mixed:
    return Mixed({'branch1x1': (cin, 64, 1),
                  'branch5x5_1': (cin, 48, 1), 'branch5x5_2': (48, 64, 5, 1, 2),
                  'branch3x3dbl_1': (cin, 64, 1), 'branch3x3dbl_2': (64, 96, 3, 1, 1),
                  'branch3x3dbl_3': (96, 96, 3, 1, 1),
                  'branch_pool': (cin, pool_features, 1)},
                 [['branch1x1'], ['branch5x5_1', 'branch5x5_2'],
                  ['branch3x3dbl_1', 'branch3x3dbl_2', 'branch3x3dbl_3']], 'avg')


def block_b(cin: int) -> Mixed:
    return Mixed({'branch3x3': (cin, 384, 3, 2),
                  'branch3x3dbl_1': (cin, 64, 1), 'branch3x3dbl_2': (64, 96, 3, 1, 1),
                  'branch3x3dbl_3': (96, 96, 3, 2)},
                 [['branch3x3'], ['branch3x3dbl_1', 'branch3x3dbl_2', 'branch3x3dbl_3']], 'reduce')


def block_c(cin: int, c7: int) -> Mixed:
    return Mixed({'branch1x1': (cin, 192, 1),
                  'branch7x7_1': (cin, c7, 1), 'branch7x7_2': _row(c7, c7, 7),
                  'branch7x7_3': _col(c7, 192, 7),
                  'branch7x7dbl_1': (cin, c7, 1), 'branch7x7dbl_2': _col(c7, c7, 7),
                  'branch7x7dbl_3': _row(c7, c7, 7), 'branch7x7dbl_4': _col(c7, c7, 7),
                  'branch7x7dbl_5': _row(c7, 192, 7),
                  'branch_pool': (cin, 192, 1)},
                 [['branch1x1'], ['branch7x7_1', 'branch7x7_2', 'branch7x7_3'],
                  [f'branch7x7dbl_{i}' for i in range(1, 6)]], 'avg')


def block_d(cin: int) -> Mixed:
    return Mixed({'branch3x3_1': (cin, 192, 1), 'branch3x3_2': (192, 320, 3, 2),
                  'branch7x7x3_1': (cin, 192, 1), 'branch7x7x3_2': _row(192, 192, 7),
                  'branch7x7x3_3': _col(192, 192, 7), 'branch7x7x3_4': (192, 192, 3, 2)},
                 [['branch3x3_1', 'branch3x3_2'],
                  [f'branch7x7x3_{i}' for i in range(1, 5)]], 'reduce')


def block_e(cin: int, pool: str) -> Mixed:
    return Mixed({'branch1x1': (cin, 320, 1),
                  'branch3x3_1': (cin, 384, 1), 'branch3x3_2a': _row(384, 384, 3),
                  'branch3x3_2b': _col(384, 384, 3),
                  'branch3x3dbl_1': (cin, 448, 1), 'branch3x3dbl_2': (448, 384, 3, 1, 1),
                  'branch3x3dbl_3a': _row(384, 384, 3), 'branch3x3dbl_3b': _col(384, 384, 3),
                  'branch_pool': (cin, 192, 1)},
                 [['branch1x1'], ['branch3x3_1', ('branch3x3_2a', 'branch3x3_2b')],
                  ['branch3x3dbl_1', 'branch3x3dbl_2', ('branch3x3dbl_3a', 'branch3x3dbl_3b')]], pool)


class FIDInceptionV3(nn.Module):
    """The network; `features(x, dim)` returns the pooled activations FID uses."""

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvBN(80, 192, 3)
        self.Mixed_5b = block_a(192, 32)
        self.Mixed_5c = block_a(256, 64)
        self.Mixed_5d = block_a(288, 64)
        self.Mixed_6a = block_b(288)
        self.Mixed_6b = block_c(768, 128)
        self.Mixed_6c = block_c(768, 160)
        self.Mixed_6d = block_c(768, 160)
        self.Mixed_6e = block_c(768, 192)
        self.Mixed_7a = block_d(768)
        self.Mixed_7b = block_e(1280, 'avg')
        self.Mixed_7c = block_e(2048, 'max')
        self.fc = nn.Linear(2048, NUM_CLASSES)

    def features(self, x: Tensor, dim: int = 2048) -> Tensor:
        """[B, dim] globally pooled activations of `x` [B, 3, 299, 299] scaled to [-1, 1]."""
        stages = (
            (64, ('Conv2d_1a_3x3', 'Conv2d_2a_3x3', 'Conv2d_2b_3x3'), True),
            (192, ('Conv2d_3b_1x1', 'Conv2d_4a_3x3'), True),
            (768, ('Mixed_5b', 'Mixed_5c', 'Mixed_5d', 'Mixed_6a', 'Mixed_6b', 'Mixed_6c',
                   'Mixed_6d', 'Mixed_6e'), False),
            (2048, ('Mixed_7a', 'Mixed_7b', 'Mixed_7c'), False),
        )
        for size, names, max_pool_after in stages:
            for name in names:
                x = getattr(self, name)(x)
            if max_pool_after:
                x = F.max_pool2d(x, 3, stride=2)
            if size == dim:
                return x.mean(dim=(2, 3))
        raise ValueError(f'feature size {dim} is not one of {FEATURE_DIMS}')

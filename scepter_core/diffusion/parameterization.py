"""Conversions between the things a network may predict: eps (the noise), x0 (the clean
sample), v = alpha * eps - sigma * x0 (Salimans & Ho 2022, variance-preserving: alpha^2 +
sigma^2 = 1) and flow = eps - x0 (rectified flow's velocity d x_t / d sigma when alpha =
1 - sigma, as FLUX and SD3 predict), for `x_t = alpha * x0 + sigma * eps`.

`alpha` and `sigma` are floats or tensors broadcastable to x_t."""
from __future__ import annotations

from typing import Union

import torch

from ..errors import ConfigError

Coef = Union[float, torch.Tensor]
VP_PREDICTION_TYPES = ('eps', 'v', 'x0')
PREDICTION_TYPES = VP_PREDICTION_TYPES + ('flow',)


def velocity(x0: torch.Tensor, eps: torch.Tensor, alpha: Coef, sigma: Coef) -> torch.Tensor:
    """v of a pair (x0, eps): alpha * eps - sigma * x0."""
    return alpha * eps - sigma * x0


def convert(out: torch.Tensor, kind: str, to: str, xt: torch.Tensor, alpha: Coef, sigma: Coef) -> torch.Tensor:
    """Turn a prediction `out` of type `kind` at x_t into a prediction of type `to`."""
    for name in (kind, to):
        if name not in PREDICTION_TYPES:
            raise ConfigError(f"PREDICTION_TYPE: '{name}' is not one of {', '.join(PREDICTION_TYPES)}")
    if kind == to:
        return out
    if kind == 'eps':
        x0, eps = (xt - sigma * out) / alpha, out
    elif kind == 'x0':
        x0, eps = out, (xt - alpha * out) / sigma
    elif kind == 'flow':  # xt = alpha x0 + sigma (out + x0)
        x0 = (xt - sigma * out) / (alpha + sigma)
        eps = out + x0
    else:
        x0, eps = alpha * xt - sigma * out, sigma * xt + alpha * out
    if to == 'flow':
        return eps - x0
    return x0 if to == 'x0' else eps if to == 'eps' else velocity(x0, eps, alpha, sigma)

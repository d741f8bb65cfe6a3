"""Conversions between the three things a network may predict: eps (the noise), x0 (the
clean sample) and v = alpha * eps - sigma * x0 (Salimans & Ho 2022), for
`x_t = alpha * x0 + sigma * eps` with alpha^2 + sigma^2 = 1.

`alpha` and `sigma` are floats or tensors broadcastable to x_t."""
from __future__ import annotations

from typing import Union

import torch

from ..errors import ConfigError

Coef = Union[float, torch.Tensor]
PREDICTION_TYPES = ('eps', 'v', 'x0')


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
    else:
        x0, eps = alpha * xt - sigma * out, sigma * xt + alpha * out
    return x0 if to == 'x0' else eps if to == 'eps' else velocity(x0, eps, alpha, sigma)

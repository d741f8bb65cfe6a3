"""Wrappers that add guidance around a model or a denoiser; samplers never see them.

- `guided_model`: classifier-free guidance (Ho & Salimans 2022) from
  `model_kwargs=[cond, uncond]` in one batched call, with the std rescale of
  Lin et al. 2023 (arXiv:2305.08891, section 3.4).
- `constrain_x0`: a user `condition_fn`, static clamping and dynamic thresholding
  (Saharia et al. 2022, Imagen) of the x0 prediction."""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch

from ..errors import ConfigError

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
DenoiseFn = Callable[[torch.Tensor, Any], torch.Tensor]


def concat_kwargs(values: Sequence[Any], key: str = 'model_kwargs') -> Any:
    """Concatenate matching keyword arguments along the batch: tensors with torch.cat,
    dicts per key, lists/tuples per position; other values must be equal."""
    first = values[0]
    if isinstance(first, torch.Tensor):
        if not all(isinstance(v, torch.Tensor) for v in values):
            raise ConfigError(f"{key}: a tensor in one branch of guidance is not a tensor in another")
        return torch.cat(list(values), dim=0)
    if isinstance(first, Mapping):
        if any(not isinstance(v, Mapping) or set(v) != set(first) for v in values):
            raise ConfigError(f'{key}: the conditional and unconditional kwargs have different keys '
                              f'({sorted(first)} vs {[sorted(v) for v in values[1:] if isinstance(v, Mapping)]})')
        return {k: concat_kwargs([v[k] for v in values], f'{key}.{k}') for k in first}
    if isinstance(first, (list, tuple)):
        if any(not isinstance(v, (list, tuple)) or len(v) != len(first) for v in values):
            raise ConfigError(f'{key}: list lengths differ between the guidance branches')
        return type(first)(concat_kwargs([v[i] for v in values], f'{key}.{i}') for i in range(len(first)))
    if any(v is not first and v != first for v in values):
        raise ConfigError(f'{key}: {first!r} and {values[1]!r} differ between the guidance branches '
                          'and cannot be batched')
    return first


def rescale_guidance(guided: torch.Tensor, cond: torch.Tensor, rescale: float) -> torch.Tensor:
    """Blend the guided prediction with a copy rescaled to the conditional one's std
    (std over all but the batch dim); rescale 0 returns `guided` unchanged."""
    dims = tuple(range(1, guided.ndim))
    ratio = cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True).clamp(min=1e-12)
    return guided * (rescale * ratio + (1.0 - rescale))


def guided_model(model: Callable, model_kwargs: Mapping | Sequence[Mapping] | None,
                 guide_scale: float | None = None, guide_rescale: float | None = None) -> ModelFn:
    """`f(x_t, t)` calling `model(x_t, t, **kwargs)`; with `[cond, uncond]` kwargs and a
    guide_scale other than None/1 it runs both branches in one batch and returns
    uncond + guide_scale * (cond - uncond)."""
    if model_kwargs is None or isinstance(model_kwargs, Mapping):
        kwargs = dict(model_kwargs or {})
        return lambda x, t: model(x, t, **kwargs)
    if not isinstance(model_kwargs, (list, tuple)) or len(model_kwargs) != 2:
        raise ConfigError('model_kwargs: expected a dict, or a list [cond_kwargs, uncond_kwargs] for guidance')
    cond = dict(model_kwargs[0])
    if guide_scale is None or guide_scale == 1:
        return lambda x, t: model(x, t, **cond)
    if guide_rescale is not None and not 0.0 <= guide_rescale <= 1.0:
        raise ConfigError(f'guide_rescale: expected a value in [0, 1], got {guide_rescale}')
    batched = concat_kwargs([cond, dict(model_kwargs[1])])

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out_cond, out_uncond = model(torch.cat([x, x]), torch.cat([t, t]), **batched).chunk(2)
        out = out_uncond + guide_scale * (out_cond - out_uncond)
        if guide_rescale:
            out = rescale_guidance(out, out_cond, guide_rescale)
        return out

    return guided


def threshold_x0(x0: torch.Tensor, clamp: float | None = None, percentile: float | None = None) -> torch.Tensor:
    """Dynamic thresholding when `percentile` is set (per sample: s = max(1, quantile(|x0|)),
    x0 -> clip(x0, -s, s) / s); otherwise clip to [-clamp, clamp] when `clamp` is set."""
    if percentile is not None:
        if not 0.0 < percentile <= 1.0:
            raise ConfigError(f'percentile: expected a value in (0, 1], got {percentile}')
        s = torch.quantile(x0.flatten(1).abs().float(), percentile, dim=1).clamp(min=1.0)
        s = s.to(x0.dtype).view((-1,) + (1,) * (x0.ndim - 1))
        return torch.maximum(torch.minimum(x0, s), -s) / s
    if clamp is not None:
        return x0.clamp(-clamp, clamp)
    return x0


def constrain_x0(denoise: DenoiseFn, clamp: float | None = None, percentile: float | None = None,
                 condition_fn: Callable | None = None) -> DenoiseFn:
    """Wrap a denoiser: `condition_fn(x0, sigma, x=x)` may return an adjusted x0 (None keeps
    it), then clamping / thresholding apply."""
    if clamp is None and percentile is None and condition_fn is None:
        return denoise

    def constrained(x: torch.Tensor, sigma: Any) -> torch.Tensor:
        x0 = denoise(x, sigma)
        if condition_fn is not None:
            adjusted = condition_fn(x0, sigma, x=x)
            x0 = x0 if adjusted is None else adjusted
        return threshold_x0(x0, clamp, percentile)

    return constrained

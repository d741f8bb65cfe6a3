"""CUDA-graph replay of the denoiser during sampling (`sample(..., cuda_graph=True)`).

At batch 1 a UNet step launches about a thousand small kernels, so eager sampling on a fast
GPU waits on Python and the driver rather than on arithmetic. `GraphedCall` captures the
call once per input signature (shapes, dtypes, autocast state, non-tensor arguments) and
then only copies the inputs into the captured buffers and replays. `sample()` makes a new
one per call, so graphs never outlive the weights they read (training updates, LoRA swaps,
reloads); capturing costs about three eager steps. Anything that cannot be captured (a CPU
model, a host sync inside the model) runs eagerly after one log line."""
from __future__ import annotations

import logging
from typing import Any, Callable

import torch
from torch.utils import _pytree as pytree


def _signature(leaves: list[Any]) -> tuple:
    sig = []
    for v in leaves:
        if isinstance(v, torch.Tensor):
            sig.append(('T', tuple(v.shape), v.dtype, v.device, v.stride()))
        else:
            sig.append(('V', v if isinstance(v, (int, float, str, bool, type(None))) else id(v)))
    on = torch.is_autocast_enabled('cuda')
    return tuple(sig) + ((on, torch.get_autocast_dtype('cuda') if on else None),)


def _autocast_without_cache() -> Any:
    """Autocast as it is, but without its weight-cast cache: cached casts are freed when the
    outer autocast exits, and a captured graph would keep reading that memory."""
    if not torch.is_autocast_enabled('cuda'):
        return torch.autocast('cuda', enabled=False)
    return torch.autocast('cuda', dtype=torch.get_autocast_dtype('cuda'), cache_enabled=False)


class GraphedCall:
    """`fn(*args, **kwargs)` replayed from CUDA graphs, one per input signature (at most
    `max_graphs`; further signatures run eagerly). Outputs are fresh tensors (copies of
    the graph's buffers), so callers may keep them across calls."""

    def __init__(self, fn: Callable, warmup: int = 2, max_graphs: int = 4, logger: logging.Logger | None = None):
        self.fn, self.warmup, self.max_graphs = fn, warmup, max_graphs
        self.logger = logger or logging.getLogger('scepter')
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, list[Any], Any] | None] = {}
        self.pool = None
        self.replays = 0

    def _capture(self, leaves: list[Any], spec: pytree.TreeSpec) -> tuple[torch.cuda.CUDAGraph, list[Any], Any]:
        static = [v.clone() if isinstance(v, torch.Tensor) else v for v in leaves]
        args, kwargs = pytree.tree_unflatten(static, spec)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), _autocast_without_cache():  # lazy inits and autotuning happen here
            for _ in range(self.warmup):
                self.fn(*args, **kwargs)
        torch.cuda.current_stream().wait_stream(side)
        self.pool = self.pool if self.pool is not None else torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with _autocast_without_cache(), torch.cuda.graph(graph, pool=self.pool):
            out = self.fn(*args, **kwargs)
        return graph, static, out

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        leaves, spec = pytree.tree_flatten((args, kwargs))
        tensors = [v for v in leaves if isinstance(v, torch.Tensor)]
        if not tensors or any(t.device.type != 'cuda' or t.requires_grad for t in tensors):
            return self.fn(*args, **kwargs)
        key = (repr(spec), _signature(leaves))
        if key not in self.graphs:
            if len(self.graphs) >= self.max_graphs:
                return self.fn(*args, **kwargs)
            try:
                self.graphs[key] = self._capture(leaves, spec)
            except Exception as e:  # noqa: BLE001 - a model that cannot be captured still samples
                torch.cuda.synchronize()
                self.logger.warning(f'cuda_graph: could not capture the denoiser ({type(e).__name__}: '
                                    f'{str(e).splitlines()[0] if str(e) else ""}); sampling eagerly')
                self.graphs[key] = None
        entry = self.graphs[key]
        if entry is None:
            return self.fn(*args, **kwargs)
        graph, static, out = entry
        for dst, src in zip(static, leaves):
            if isinstance(dst, torch.Tensor) and dst.data_ptr() != src.data_ptr():
                dst.copy_(src)
        graph.replay()
        self.replays += 1
        return pytree.tree_map(lambda v: v.clone() if isinstance(v, torch.Tensor) else v, out)


def maybe_graphed(model: Callable, enabled: bool, device: torch.device | str,
                  logger: logging.Logger | None = None) -> Callable:
    """`model` wrapped in a `GraphedCall` when `enabled` and sampling on CUDA, else itself
    (with one log line when asked for on another device)."""
    if not enabled:
        return model
    if torch.device(device).type != 'cuda':
        (logger or logging.getLogger('scepter')).info(f'cuda_graph: only on CUDA; sampling eagerly on {device}')
        return model
    return GraphedCall(model, logger=logger)

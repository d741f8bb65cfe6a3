"""Collective helpers for code that runs the same in one process and in many: each is a
no-op (or the obvious single-process answer) when torch.distributed is not initialized."""
from __future__ import annotations

import io
from typing import Any, Sequence, TypeVar

import torch
import torch.distributed as dist

from .env import we

T = TypeVar('T')


def barrier() -> None:
    """Wait until every rank arrives (nothing to wait for in one process)."""
    if we.is_distributed:
        dist.barrier()


def _pack(obj: Any) -> bytes:
    # torch.save, not the plain pickle of *_object: that one cannot rebuild some tensors
    # (uint32, as in numpy's RNG state) in torch 2.13
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _unpack(data: bytes) -> Any:
    return torch.load(io.BytesIO(data), map_location='cpu', weights_only=False)  # our own ranks' data


def gather_to_main(obj: Any) -> list[Any] | None:
    """Rank 0 gets `[obj of rank 0, obj of rank 1, ...]`, the other ranks None.
    Tensors inside `obj` should be on the CPU."""
    if not we.is_distributed:
        return [obj]
    out: list[Any] | None = [None] * we.world_size if we.is_main else None
    dist.gather_object(_pack(obj), out, dst=0)
    return [_unpack(b) for b in out] if out is not None else None


def all_gather(obj: Any) -> list[Any]:
    """Every rank gets `[obj of rank 0, obj of rank 1, ...]`."""
    if not we.is_distributed:
        return [obj]
    out: list[Any] = [None] * we.world_size
    dist.all_gather_object(out, _pack(obj))
    return [_unpack(b) for b in out]


def mean_over_ranks(value: float) -> float:
    """The mean of `value` over all ranks (every rank must call)."""
    if not we.is_distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=we.device if we.device.type == 'cuda' else 'cpu')
    dist.all_reduce(t)
    return float(t.item()) / we.world_size


def max_over_ranks(value: int) -> int:
    """The largest `value` any rank holds (e.g. the longest shard)."""
    if not we.is_distributed:
        return value
    return max(all_gather(int(value)))


def shard(items: Sequence[T]) -> list[T]:
    """This rank's share of `items`: positions rank, rank + W, rank + 2W, ..."""
    return list(items[we.rank::we.world_size]) if we.is_distributed else list(items)


def unshard(shards: Sequence[Sequence[T]]) -> list[T]:
    """Inverse of `shard`: the per-rank lists (in rank order) back in the original order."""
    out: list[T] = []
    for i in range(max((len(s) for s in shards), default=0)):
        out += [s[i] for s in shards if i < len(s)]
    return out


def broadcast_module(module: torch.nn.Module) -> None:
    """Give every rank rank 0's parameters and buffers (for models that are not wrapped by
    DDP/FSDP, which do this themselves: e.g. a randomly initialized model under test)."""
    if not we.is_distributed:
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            if not t.is_meta:
                dist.broadcast(t.data, src=0)

"""The process group and collective helpers for code that runs the same in one process and
in many: each helper is a no-op (or the obvious single-process answer) when torch.distributed
is not initialized. Sits above env.py; parallel.py and launch.py build on it."""
from __future__ import annotations

import datetime
import io
import os
from typing import Any, Sequence, TypeVar

import torch
import torch.distributed as dist

from .config import Config
from .env import we

T = TypeVar('T')


# ---- the process group ------------------------------------------------------------------
def uses_cuda(env: Config) -> bool:
    """Whether the recipe's ENV block (or its absence) puts the workers on CUDA."""
    device = env.get('DEVICE')
    return torch.cuda.is_available() and (not device or str(device).startswith('cuda'))


def backend_for(env: Config) -> str:
    """ENV.BACKEND, else nccl with CUDA and gloo otherwise; nccl without CUDA becomes gloo."""
    wanted = env.get('BACKEND')
    if wanted == 'nccl' and not uses_cuda(env):
        return 'gloo'
    return wanted or ('nccl' if uses_cuda(env) else 'gloo')


def init_process_group(env: Config) -> None:
    """Join the group described by RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT, with
    ENV.TIMEOUT_MINUTES as the timeout of every collective."""
    backend = backend_for(env)
    kwargs: dict[str, Any] = {}
    if uses_cuda(env):
        local_rank = int(os.environ.get('LOCAL_RANK', 0))
        torch.cuda.set_device(local_rank)
        if backend == 'nccl':
            kwargs['device_id'] = torch.device('cuda', local_rank)
    minutes = float(env.get('TIMEOUT_MINUTES') or 30)
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=minutes), **kwargs)


def leave_process_group(ok: bool) -> None:
    """Destroy the group; after a success, wait for every rank first."""
    if dist.is_initialized():
        if ok:  # nobody leaves while another rank still expects it in a collective
            dist.barrier()
        dist.destroy_process_group()


# ---- collectives ------------------------------------------------------------------------


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

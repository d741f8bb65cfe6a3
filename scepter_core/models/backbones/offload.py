"""Block-wise CPU offload of a transformer's frozen weights (Flux, MMDiT: OFFLOAD_BLOCKS).

Each block's frozen parameters and buffers live on the CPU (pinned when CUDA is there); when
the block runs, a copy goes to the compute device and is dropped after the block returns, so
the device holds one block's frozen weights at a time besides what autograd keeps for the
backward. Trained parameters (LoRA adapters, a block that trains) stay on the device: the
optimizer holds them. Under gradient checkpointing the recomputation fetches the block again.

On a CPU-only machine the compute device is the CPU: the copy is still made and dropped per
block (the same code path), which is what the tests check."""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn


def _frozen_slots(block: nn.Module) -> list[tuple[nn.Module, str, bool]]:
    """(module, name, is_parameter) of every frozen parameter and every buffer of `block`."""
    slots = []
    for module in block.modules():
        slots += [(module, n, True) for n, p in module._parameters.items() if p is not None and not p.requires_grad]
        slots += [(module, n, False) for n, b in module._buffers.items() if b is not None]
    return slots


class BlockOffload:
    """Keeps the frozen weights of the blocks it runs on the CPU between their calls."""

    def __init__(self) -> None:
        self.stores: dict[int, list[tuple[nn.Module, str, bool, torch.Tensor]]] = {}
        self.fetches = 0  # blocks copied to the compute device (for tests and logs)

    def _store(self, block: nn.Module) -> list[tuple[nn.Module, str, bool, torch.Tensor]]:
        """The CPU copies of `block`'s frozen tensors, (re)made when something moved them."""
        store = self.stores.get(id(block))
        if store is None or any(getattr(m, '_parameters' if p else '_buffers')[n] is not t for m, n, p, t in store):
            pin = torch.cuda.is_available()
            store = []
            for module, name, is_param in _frozen_slots(block):
                t = getattr(module, '_parameters' if is_param else '_buffers')[name]
                cpu = t.detach().to('cpu')
                cpu = cpu.pin_memory() if pin and cpu.device.type == 'cpu' else cpu
                cpu = nn.Parameter(cpu, requires_grad=False) if is_param else cpu
                getattr(module, '_parameters' if is_param else '_buffers')[name] = cpu
                store.append((module, name, is_param, cpu))
            self.stores[id(block)] = store
        return store

    def prepare(self, blocks: list[nn.Module]) -> None:
        """Move every block's frozen tensors to the CPU now (before the first one runs), so the
        device never holds them all."""
        for block in blocks:
            self._store(block)

    def run(self, block: nn.Module, device: torch.device, *args: Any) -> Any:
        """block(*args) with its frozen tensors copied to `device` for the call only."""
        store = self._store(block)
        for module, name, is_param, cpu in store:
            moved = cpu.detach().to(device, non_blocking=True, copy=True)
            getattr(module, '_parameters' if is_param else '_buffers')[name] = \
                nn.Parameter(moved, requires_grad=False) if is_param else moved
        self.fetches += 1
        try:
            return block(*args)
        finally:
            for module, name, is_param, cpu in store:
                getattr(module, '_parameters' if is_param else '_buffers')[name] = cpu


    def apply(self, blocks: list[nn.Module], fn: Callable[[torch.Tensor], torch.Tensor],
              apply_rest: Callable[[], Any]) -> Any:
        """The owner's Module._apply (`.to(device)`, `.to(dtype)`) with the blocks' frozen tensors
        kept on the CPU: `apply_rest` converts everything else; each frozen tensor goes through
        `fn` alone and back to the CPU, so moving a model to a GPU never holds every block there."""
        held = [(m, n, p, _slots(m, p)[n]) for b in blocks for m, n, p in _frozen_slots(b)]
        for m, n, p, _ in held:
            _slots(m, p)[n] = None  # Module._apply skips empty slots
        try:
            out = apply_rest()
        except BaseException:
            for m, n, p, t in held:
                _slots(m, p)[n] = t
            raise
        for m, n, p, t in held:
            with torch.no_grad():
                new = fn(t)
                new = new.to('cpu') if new.device.type != 'cpu' else new
            _slots(m, p)[n] = nn.Parameter(new, requires_grad=False) if p else new
        return out


def _slots(module: nn.Module, is_param: bool) -> dict[str, Any]:
    return module._parameters if is_param else module._buffers


class OffloadsBlocks:
    """Mixin of a transformer with OFFLOAD_BLOCKS (`self.offload`): moving it (`.to(device)`)
    leaves its blocks' frozen tensors on the CPU, where the offload fetches them from."""
    offload: BlockOffload | None = None

    def offload_blocks(self) -> list[nn.Module]:
        raise NotImplementedError

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> Any:
        if self.offload is None or not recurse:
            return super()._apply(fn, recurse)  # type: ignore[misc]
        return self.offload.apply(self.offload_blocks(), fn,
                                  lambda: super(OffloadsBlocks, self)._apply(fn, recurse))  # type: ignore[misc]


def run_block(owner: nn.Module, block: nn.Module, checkpointed: bool, offload: BlockOffload | None,
              device: torch.device, *args: torch.Tensor) -> Any:
    """One transformer block: under gradient checkpointing when `checkpointed`, its frozen
    weights fetched from the CPU when `offload` (inside the checkpoint, so the recomputation
    fetches them too)."""
    from torch.utils.checkpoint import checkpoint
    call: Callable[..., Any] = block if offload is None else (lambda *a: offload.run(block, device, *a))
    if checkpointed and owner.training and torch.is_grad_enabled():
        return checkpoint(call, *args, use_reentrant=False)
    return call(*args)

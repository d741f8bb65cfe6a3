"""FSDP for SOLVER.USE_FSDP: torch's `fully_shard` (FSDP2, which also runs on CPU with gloo)
over every block of the model's ModuleLists and then the whole model. Checkpoints hold
full state dicts (gathered on rank 0), so they load in a single process.

SHARDING_STRATEGY: full_shard (parameters, gradients and optimizer state sharded; weights
gathered for each forward and backward), shard_grad_op (weights kept after the forward
until the backward), hybrid_shard (full_shard inside a node, replicated across nodes)."""
from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch import nn

from .config import Config
from .env import we
from .errors import ConfigError

# strategy -> reshard_after_forward
STRATEGIES = {'full_shard': True, 'shard_grad_op': False, 'hybrid_shard': True}
# Methods callers use instead of forward; each must gather the root's weights first.
FORWARD_METHODS = ('forward_train', 'forward_test')


def is_fsdp(model: nn.Module | None) -> bool:
    from torch.distributed.fsdp import FSDPModule
    return isinstance(model, FSDPModule)


def _mesh(strategy: str) -> Any:
    from torch.distributed.device_mesh import init_device_mesh
    device = 'cuda' if we.device.type == 'cuda' else 'cpu'
    if strategy == 'hybrid_shard':
        per_node = int(os.environ.get('LOCAL_WORLD_SIZE', we.world_size))
        return init_device_mesh(device, (we.world_size // per_node, per_node), mesh_dim_names=('replicate', 'shard'))
    return init_device_mesh(device, (we.world_size,))


def _blocks(model: nn.Module) -> list[nn.Module]:
    """Elements of the model's ModuleLists that hold parameters and are called through their
    own forward (a unit gathers its weights in a forward hook; plain containers, whose
    children the parent calls directly, stay in the enclosing unit), innermost first."""
    listed = {id(m) for ml in model.modules() if isinstance(ml, nn.ModuleList) for m in ml}
    return [m for _, m in reversed(list(model.named_modules()))
            if id(m) in listed and type(m).forward is not nn.Module.forward
            and next(m.parameters(), None) is not None]


def wrap_fsdp(model: nn.Module, cfg: Config, logger: logging.Logger) -> nn.Module:
    """Shard `model` in place across the process group; returns it."""
    strategy = str(cfg.get('SHARDING_STRATEGY') or 'full_shard').lower()
    if strategy not in STRATEGIES:
        raise ConfigError(f"'SOLVER.SHARDING_STRATEGY': expected one of {', '.join(STRATEGIES)}, got {strategy!r}")
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method
    from .dist import broadcast_module
    broadcast_module(model)  # fully_shard keeps each rank's own slice: start them all from rank 0's weights
    kwargs = {'mesh': _mesh(strategy), 'reshard_after_forward': STRATEGIES[strategy]}
    blocks = _blocks(model)
    for block in blocks:
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)
    for name in FORWARD_METHODS:
        if hasattr(model, name):
            register_fsdp_forward_method(model, name)
    logger.info(f'FSDP {strategy}: {len(blocks)} blocks and the root sharded over {we.world_size} ranks')
    return model


def _options(**kwargs: Any) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions
    return StateDictOptions(full_state_dict=True, **kwargs)


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's weights on rank 0 (CPU tensors); {} elsewhere. All ranks call."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    return get_model_state_dict(model, options=_options(cpu_offload=True))


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer state keyed by parameter name, whole, on rank 0. All ranks call."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
    return get_optimizer_state_dict(model, optimizer, options=_options(cpu_offload=True))


def load_full_model_state(model: nn.Module, sd: dict[str, torch.Tensor]) -> str:
    """Every rank passes the whole state dict; each keeps its shard. Returns a short report."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict
    result = set_model_state_dict(model, sd, options=_options(strict=False))
    return f'{len(sd)} tensors, {len(result.missing_keys)} missing, {len(result.unexpected_keys)} unexpected'


def load_full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a state saved by `full_optimizer_state` (into a sharded or a plain model)."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict
    set_optimizer_state_dict(model, optimizer, state, options=_options())


def full_tensors(obj: Any) -> Any:
    """`obj` with every sharded tensor (DTensor) gathered whole onto the CPU. All ranks call."""
    from torch.distributed.tensor import DTensor
    if isinstance(obj, DTensor):
        return obj.full_tensor().cpu()
    if isinstance(obj, dict):
        return {k: full_tensors(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(full_tensors(v) for v in obj)
    return obj


def shard_like(obj: Any, model: nn.Module) -> Any:
    """Inverse of `full_tensors` for hook states keyed by parameter name (an EMA shadow):
    each whole tensor stored under a sharded parameter's name becomes this rank's shard."""
    from torch.distributed.tensor import DTensor, distribute_tensor
    params = {n: p for n, p in model.named_parameters() if isinstance(p, DTensor)}

    def convert(key: Any, value: Any) -> Any:
        p = params.get(key)
        if p is not None and isinstance(value, torch.Tensor) and not isinstance(value, DTensor) \
                and tuple(value.shape) == tuple(p.shape):
            return distribute_tensor(value.to(p.device), p.device_mesh, p.placements, src_data_rank=None)
        if isinstance(value, dict):
            return {k: convert(k, v) for k, v in value.items()}
        return value
    return convert(None, obj)

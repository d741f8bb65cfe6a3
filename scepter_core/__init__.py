"""scepter core: registries, configs, and every registered building block.

Light names (registries, Config) import at once; heavier ones (torch-based bases,
`we`, `FS`) load on first access so that tools importing this package stay fast."""
from __future__ import annotations

import importlib
import logging
from typing import Any

from .config import Config
from .errors import BuildError, CheckpointError, ConfigError, RegistryError, ScepterError
from .registry import (BACKBONES, DATASETS, DIFFUSION_SAMPLERS, DIFFUSIONS, EMBEDDERS, FILE_SYSTEMS,
                       HOOKS, LOSSES, LR_SCHEDULERS, METRICS, MODELS, NOISE_SCHEDULES, OPTIMIZERS,
                       REGISTRIES, SAMPLERS, SOLVERS, TOKENIZERS, TRANSFORMS, TUNERS, Registry, build)

__version__ = '0.1.0'

# torchao (the int8 frozen base) logs, at import, every CUDA kernel it cannot load; peft and
# diffusers import it whenever it is installed, so without this each CPU command would start so.
# Its enum registrations also make torch's pytree log a deprecation line each.
for _name in ('torchao', 'torch.utils._pytree'):
    logging.getLogger(_name).setLevel(logging.ERROR)

_LAZY = {
    'dict_to_yaml': 'scepter_core.templates', 'BaseObject': 'scepter_core.base',
    'get_logger': 'scepter_core.base',
    'we': 'scepter_core.env', 'FS': 'scepter_core.fs',
    'TrainModule': 'scepter_core.models.base', 'BaseModel': 'scepter_core.models.base',
    'BaseEmbedder': 'scepter_core.models.embedders.base',
    'BaseSolver': 'scepter_core.solvers.base',
    'BaseHook': 'scepter_core.hooks.base', 'LoopState': 'scepter_core.hooks.base',
    'TrainLoop': 'scepter_core.hooks.base',
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'scepter_core' has no attribute '{name}'")


__all__ = ['Config', 'Registry', 'build', 'REGISTRIES', 'ScepterError', 'ConfigError', 'RegistryError',
           'BuildError', 'CheckpointError', *[r for r in REGISTRIES], *_LAZY]

"""The ENV block of a recipe: launcher, backend and process settings."""
from __future__ import annotations

from .config import Config
from .registry import check_config


class EnvSettings:
    """ENV: how processes are launched and talk to each other."""

    para_dict = {
        'BACKEND': {'value': None, 'type': str, 'choices': ('nccl', 'gloo', 'mpi'),
                    'description': 'torch.distributed backend; nccl with CUDA, gloo otherwise when unset.'},
        'LAUNCHER': {'value': 'spawn', 'choices': ('spawn', 'torchrun'),
                     'description': 'spawn: one worker per GPU (or NUM_PROCESSES on CPU); torchrun: read its env.'},
        'NUM_PROCESSES': {'value': 1, 'description': 'Workers per node on CPU (spawn launcher).'},
        'USE_PL': {'value': False, 'description': 'Run the solver under a Lightning Trainer.'},
        'SEED': {'value': 2023, 'description': 'Global seed; each rank adds its rank.'},
        'TIMEOUT_MINUTES': {'value': 30, 'description': 'Collective operation timeout.'},
        'DEVICE': {'value': None, 'type': str, 'description': "Force a device ('cpu', 'cuda', 'mps'); auto when unset."},
    }


def check_env_block(env: Config) -> list[str]:
    """Problems with a recipe's ENV block, one line each."""
    if not isinstance(env, dict):
        return [f"'ENV': expected a block, got {type(env).__name__} {env!r}"]
    return check_config(EnvSettings, env, 'ENV')

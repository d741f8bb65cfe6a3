"""BackwardHook: the settings of the solver's training step (clipping, accumulation, the
non-finite loss policy). The step itself is `solvers/step.py`'s and runs with or without
this hook; Scepter's recipes list it, so it stays the place for these keys."""
from __future__ import annotations

from ..registry import HOOKS
from .base import PRIORITY, BaseHook


@HOOKS.register_class()
class BackwardHook(BaseHook):
    """Settings only: the solver reads them; the hook does nothing at any stage."""

    default_priority = PRIORITY['BACKWARD']
    para_dict = {
        'GRADIENT_CLIP': {'value': None, 'type': (float, int),
                          'description': 'Clip the global grad norm to this value (None or <= 0: off).'},
        'MAX_NONFINITE_STEPS': {'value': 5, 'description': 'Stop after this many non-finite losses in a row.'},
        'ACCUMULATE_STEP': {'value': 1, 'description': "Scepter's name for SOLVER.ACCU_STEP (used when that is 1)."},
        'EMPTY_CACHE_STEP': {'value': -1, 'description': 'Empty the CUDA cache every N steps (-1: never).'},
    }

"""CPU fast paths, applied to a model after it is built (models themselves are plain torch).

- gemm.py: fp32 linears through oneDNN where a probe finds it faster (SCEPTER_CPU_GEMM).
- layers.py: fast nn.Linear / nn.Conv2d subclasses, swapped in by class (keys unchanged).
- packing.py: packed conv weights while weights are constant, channels_last roots
  (SCEPTER_CPU_PACK_LIMIT_MB).
- attention.py: CPU attention and the fused small-attention Function.
- paths.py: `apply(model, mode, cfg)`, the one switch (SOLVER.CPU_FAST_PATHS,
  SCEPTER_CPU_FAST_PATHS=0) and the one log line.
- switches.py: the solver's SOLVER.CHANNELS_LAST / COMPILE / USE_AMP / CACHE_LATENTS steps.

Imports point down: this package uses the models; models never import it."""
from __future__ import annotations

from .packing import packed_weights
from .paths import ENV, apply, describe, disabled_reason

__all__ = ['ENV', 'apply', 'describe', 'disabled_reason', 'packed_weights']

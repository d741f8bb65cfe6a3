"""LoRA (and DoRA) adapters injected with peft, configured with Scepter's SwiftLoRA keys."""
from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

from torch import nn

if TYPE_CHECKING:
    from peft import LoraConfig

from ..base import BaseObject
from ..config import Config
from ..errors import ConfigError
from ..registry import TUNERS

# The attention and feed-forward projections of every UNet transformer block (Scepter's recipe).
UNET_ATTENTION_TARGETS = 'model.*(to_q|to_k|to_v|to_out.0|net.0.proj|net.2)$'
# An EMA copy is an average of frozen weights: adapting it would only add unused parameters.
_NOT_EMA = r'(?!model_ema\.)'


def target_regex(targets: str | list[str]) -> str:
    """One regex over module names (peft matches it with re.fullmatch) from a regex or a
    list of names / name suffixes; the EMA copy of the UNet is never a target."""
    if isinstance(targets, str):
        return f'{_NOT_EMA}(?:{targets})'
    names = '|'.join(re.escape(t) for t in targets)
    return rf'{_NOT_EMA}(?:.*\.)?(?:{names})'


@TUNERS.register_class(aliases=('SwiftLoRA',))
class LoRA(BaseObject):
    """Low-rank adapters on the modules whose names match TARGET_MODULES (a regex over the
    module names of the whole network, e.g. `model.*(to_q|to_k)$` for the UNet or
    `cond_stage_model.*(q_proj|v_proj)$` for the text encoder). Adapted layers compute
    W x + (LORA_ALPHA / R) * B A x; only A and B (and DoRA magnitudes) train."""

    para_dict = {
        'R': {'value': 64, 'type': int, 'description': 'Rank of the update B A.'},
        'LORA_ALPHA': {'value': 64, 'type': (int, float), 'description': 'Scale numerator: updates are scaled by LORA_ALPHA / R.'},
        'LORA_DROPOUT': {'value': 0.0, 'type': float, 'description': 'Dropout on the adapter input while training.'},
        'BIAS': {'value': 'none', 'type': str, 'choices': ('none', 'all', 'lora_only'),
                 'description': 'Biases that train too: none, all of the network, or those of adapted layers.'},
        'TARGET_MODULES': {'value': UNET_ATTENTION_TARGETS, 'type': (str, list),
                           'description': 'Regex over module names of the whole network (or a list of names).'},
        'USE_DORA': {'value': False, 'description': 'Weight-decomposed LoRA (DoRA): also learn per-output magnitudes.'},
        'USE_RSLORA': {'value': False, 'description': 'Scale by LORA_ALPHA / sqrt(R) instead of LORA_ALPHA / R.'},
        'INIT_LORA_WEIGHTS': {'value': True, 'type': (bool, str), 'choices': (True, False, 'gaussian'),
                              'description': "peft's init of A (B starts at 0, so the model starts unchanged); "
                                             'inits that rewrite the base weights (pissa, olora) are not offered.'},
        'RANK_PATTERN': {'value': {}, 'type': dict,
                         'description': 'Module-name regex -> rank, for modules whose rank differs from R.'},
        'ALPHA_PATTERN': {'value': {}, 'type': dict,
                          'description': 'Module-name regex -> alpha, for modules whose alpha differs from LORA_ALPHA.'},
    }

    def __init__(self, cfg: Config | dict | None = None, logger: logging.Logger | None = None):
        super().__init__(cfg, logger)
        where = self.cfg.path or 'LoRA'
        if self.cfg.R <= 0:
            raise ConfigError(f"'{where}.R': the rank must be positive, got {self.cfg.R}")
        targets = self.cfg.TARGET_MODULES
        if not targets:
            raise ConfigError(f"'{where}.TARGET_MODULES': empty; give a regex over module names, "
                              f"e.g. {UNET_ATTENTION_TARGETS!r}")
        try:
            re.compile(target_regex(targets))
        except re.error as e:
            raise ConfigError(f"'{where}.TARGET_MODULES': not a valid regex {targets!r}: {e}") from e
        self.where = where

    def lora_config(self) -> 'LoraConfig':
        """The peft LoraConfig these keys describe."""
        from peft import LoraConfig
        c = self.cfg
        return LoraConfig(r=c.R, lora_alpha=c.LORA_ALPHA, lora_dropout=c.LORA_DROPOUT, bias=c.BIAS or 'none',
                          target_modules=target_regex(c.TARGET_MODULES), use_dora=c.USE_DORA,
                          use_rslora=c.USE_RSLORA, init_lora_weights=c.INIT_LORA_WEIGHTS,
                          rank_pattern=dict(c.RANK_PATTERN or {}), alpha_pattern=dict(c.ALPHA_PATTERN or {}))

    def inject(self, model: nn.Module, adapter_name: str) -> list[str]:
        """Wrap the matching layers of `model` with a new adapter `adapter_name` (in place);
        returns the names of the adapted modules."""
        from peft import inject_adapter_in_model
        from peft.tuners.lora import LoraLayer
        try:
            inject_adapter_in_model(self.lora_config(), model, adapter_name=adapter_name)
            # peft leaves its own config record on the model; ours lives in apply.py, and a
            # stale one would make the next injection warn about multiple adapters.
            model.__dict__.pop('peft_config', None)
        except ValueError as e:
            raise ConfigError(f"'{self.where}.TARGET_MODULES': {self.cfg.TARGET_MODULES!r} cannot be "
                              f'applied: {str(e).splitlines()[0]}') from e
        return [n for n, m in model.named_modules() if isinstance(m, LoraLayer) and adapter_name in m.lora_A]

    def to_dict(self) -> dict[str, Any]:
        """The block as plain data (NAME first), for adapter-file metadata."""
        data = self.cfg.to_dict()
        data.pop('NAME', None)
        return {'NAME': type(self).__name__, **data}

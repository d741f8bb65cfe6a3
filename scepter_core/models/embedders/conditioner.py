"""GeneralConditioner: SGM's / Scepter's list of embedders, each reading its INPUT_KEYS from a
batch dict; outputs are joined by rank, as the backbone takes them (SDXL:
`{'crossattn': [B, 77, 2048], 'vector': [B, 2816]}`)."""
from __future__ import annotations

import logging
from typing import Any, Iterable

import torch
from torch import nn

from ...config import Config
from ...errors import ConfigError, ScepterError
from ...registry import EMBEDDERS
from .base import BaseEmbedder

OUTPUT_KEYS = {2: 'vector', 3: 'crossattn', 4: 'concat', 5: 'concat'}  # embedding rank -> backbone input
CAT_DIMS = {'vector': 1, 'crossattn': 2, 'concat': 1}


@EMBEDDERS.register_class()
class GeneralConditioner(BaseEmbedder):
    """Runs EMBEDDERS on a batch dict and joins their outputs: 2-D ones on features into
    'vector', 3-D ones on features into 'crossattn', 4/5-D ones on channels into 'concat'.
    Per embedder (keys in its own block): INPUT_KEYS, UCG_RATE (zero its output for that share
    of training samples, or with LEGACY_UCG_VALUE replace its input instead), IS_TRAINABLE."""

    para_dict = {
        'EMBEDDERS': {'value': [], 'type': list, 'registry': 'EMBEDDERS',
                      'description': 'Embedder blocks, each with its INPUT_KEYS.'},
        'PRETRAINED_MODEL': {'value': None, 'type': str,
                             'description': "Weights for the embedders (keys 'embedders.N.*', also under "
                                            "'conditioner.' or 'cond_stage_model.')."},
        'REFINER_MODEL': {'value': None, 'registry': 'BACKBONES',
                          'description': "Where Scepter's SDXL recipes put the refiner UNet; LatentDiffusionXL "
                                         'reads it from here or from its own block.'},
        'REFINER_COND_MODEL': {'value': None, 'registry': 'EMBEDDERS',
                               'description': "The refiner's conditioner (see REFINER_MODEL)."},
    }

    def __init__(self, cfg: Config | dict | None = None, logger: logging.Logger | None = None):
        super().__init__(cfg, logger=logger)
        self.embedders = nn.ModuleList()
        for i, block in enumerate(self.cfg.EMBEDDERS):
            block = block.deepcopy() if isinstance(block, Config) else Config(block)  # the recipe stays as written
            if block.get('USE_GRAD') is None:  # Scepter: the conditioner's USE_GRAD is the default
                block['USE_GRAD'] = self.cfg.USE_GRAD
            embedder = EMBEDDERS.build(block, logger=self.logger)
            if not isinstance(embedder, BaseEmbedder) or not embedder.input_keys:
                raise ConfigError(f"'{self.cfg.path or 'GeneralConditioner'}.EMBEDDERS.{i}.INPUT_KEYS': each "
                                  f"embedder needs the batch keys it reads, e.g. ['prompt']")
            if embedder.is_trainable:
                embedder._frozen = False
                embedder.requires_grad_(True)
                embedder.use_grad = True
            self.embedders.append(embedder)
        # Every batch key some embedder reads, in order of first use.
        self.input_keys = list(dict.fromkeys(k for e in self.embedders for k in e.input_keys))
        if self.cfg.PRETRAINED_MODEL:
            from ...checkpoint import load_component
            load_component(self, self.cfg.PRETRAINED_MODEL, ('conditioner.', 'cond_stage_model.', ''),
                           logger=self.logger)

    def forward(self, batch: dict[str, Any], force_zero_embeddings: Iterable[str] | None = None,
                drop: bool = False) -> dict[str, torch.Tensor]:
        """Embeddings of `batch`; embedders reading a key in `force_zero_embeddings` give zeros
        (SDXL's negative condition for an empty prompt). `drop` applies UCG_RATE (training)."""
        zero = set(force_zero_embeddings or ())
        out: dict[str, torch.Tensor] = {}
        for i, embedder in enumerate(self.embedders):
            inputs = [self._input(batch, key, i) for key in embedder.input_keys]
            if drop and embedder.ucg_rate > 0 and embedder.legacy_ucg_val is not None:
                inputs = [self._replace_some(v, embedder.legacy_ucg_val, embedder.ucg_rate) for v in inputs]
            with torch.set_grad_enabled(torch.is_grad_enabled() and bool(getattr(embedder, 'use_grad', True))):
                embs = embedder.encode(*inputs)
            for emb in embs if isinstance(embs, (list, tuple)) else [embs]:
                key = OUTPUT_KEYS.get(emb.dim())
                if key is None:
                    raise ScepterError(f'GeneralConditioner: embedder {i} ({type(embedder).__name__}) gave a '
                                       f'{emb.dim()}-D output {tuple(emb.shape)}; expected 2- to 5-D')
                if drop and embedder.ucg_rate > 0 and embedder.legacy_ucg_val is None:
                    keep = torch.bernoulli(torch.full((emb.shape[0],), 1.0 - embedder.ucg_rate, device=emb.device))
                    emb = emb * keep.view(-1, *[1] * (emb.dim() - 1)).to(emb.dtype)
                if zero.intersection(embedder.input_keys):
                    emb = torch.zeros_like(emb)
                out[key] = torch.cat((out[key], emb.to(out[key].dtype)), CAT_DIMS[key]) if key in out else emb
        return out

    @staticmethod
    def _input(batch: dict[str, Any], key: str, index: int) -> Any:
        if key not in batch:
            raise ScepterError(f"GeneralConditioner: embedder {index} reads '{key}', which the batch lacks "
                               f"(it has: {', '.join(sorted(batch))})")
        return batch[key]

    @staticmethod
    def _replace_some(values: Any, replacement: Any, rate: float) -> Any:
        """SGM's legacy UCG: each sample's input replaced by `replacement` with probability `rate`."""
        hit = (torch.rand(len(values)) < rate).tolist()
        if isinstance(values, torch.Tensor):
            values = values.clone()
            for j, h in enumerate(hit):
                if h:
                    values[j] = replacement
            return values
        return [replacement if h else v for v, h in zip(values, hit)]

    # Scepter's names for the same computation.
    def encode(self, batch_dict: dict[str, Any], is_unconditional: bool = False,
               force_uc_zero_embeddings: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
        return self(batch_dict, force_uc_zero_embeddings if is_unconditional else None)

    def get_unconditional_conditioning(self, batch_c: dict[str, Any], batch_uc: dict[str, Any] | None = None,
                                       force_uc_zero_embeddings: Iterable[str] | None = None
                                       ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        return self(batch_c), self(batch_c if batch_uc is None else batch_uc, force_uc_zero_embeddings)

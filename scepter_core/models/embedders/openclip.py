"""OpenCLIP text towers (SD2's ViT-H/14, SDXL's ViT-bigG/14) as transformers' CLIP classes
behind Scepter's FrozenOpenCLIPEmbedder and FrozenOpenCLIPEmbedder2. The OpenCLIP
single-file layout (`cond_stage_model.model.*`, fused `in_proj`) is a key table in convert/,
not a second model: state-dict keys here are `transformer.text_model.*` (and
`transformer.text_projection.weight`), as in FrozenCLIPEmbedder."""
from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from ...config import Config
from ...errors import ConfigError
from ...registry import EMBEDDERS
from ..tokenizers.clip_tokenizer import OpenClipTokenizer
from .base import BaseEmbedder
from .clip import build_text_config, load_text_model, local_model_dir, nest_text_model

_TEXT_COMMON = {'vocab_size': 49408, 'max_position_embeddings': 77, 'hidden_act': 'gelu',
                'layer_norm_eps': 1e-5, 'bos_token_id': 49406, 'eos_token_id': 49407}
# Text towers of the OpenCLIP models SD2 (ViT-H-14) and SDXL (ViT-bigG-14) condition on.
OPENCLIP_TEXT_ARCHS = {
    'ViT-H-14': {**_TEXT_COMMON, 'hidden_size': 1024, 'intermediate_size': 4096, 'num_hidden_layers': 24,
                 'num_attention_heads': 16, 'projection_dim': 1024},
    'ViT-bigG-14': {**_TEXT_COMMON, 'hidden_size': 1280, 'intermediate_size': 5120, 'num_hidden_layers': 32,
                    'num_attention_heads': 20, 'projection_dim': 1280},
}
LAYER_INDEX = {'last': 0, 'penultimate': 1}  # blocks skipped from the end, Scepter's layer_idx


class OpenCLIPTextEmbedder(BaseEmbedder):
    """Shared part of the two OpenCLIP embedders: the tower (built from ARCH + CONFIG, or read
    from a transformers directory), its pad-with-zero tokenizer and the gradient policy."""

    model_class = 'CLIPTextModel'
    para_dict = {
        'ARCH': {'value': 'ViT-H-14', 'choices': tuple(OPENCLIP_TEXT_ARCHS), 'description': 'OpenCLIP architecture.'},
        'PRETRAINED_MODEL': {'value': None, 'type': str,
                             'description': "Directory (or ms://, hf:// URI) with a transformers CLIP text model "
                                            "(a diffusers 'text_encoder' folder); null: random weights of ARCH."},
        'CONFIG': {'value': {}, 'type': dict,
                   'description': "CLIPTextConfig fields over ARCH's text config (the full tower), "
                                  'e.g. a tiny one for tests.'},
        'TOKENIZER_PATH': {'value': None, 'type': str,
                           'description': "Tokenizer directory (a diffusers 'tokenizer_2' folder); null: the "
                                          'packaged CLIP vocabulary. Rows are padded with 0 either way.'},
        'MAX_LENGTH': {'value': 77, 'description': 'Tokens per prompt.'},
        'LAYER': {'value': 'last', 'choices': tuple(LAYER_INDEX), 'description': 'Which block output to return.'},
    }

    def __init__(self, cfg: Config | dict | None = None, logger: logging.Logger | None = None):
        super().__init__(cfg, logger=logger)
        import transformers
        c = self.cfg
        self.where = c.path or type(self).__name__
        self.use_grad: bool = c.USE_GRAD
        self.freeze_flag: bool = c.FREEZE
        self.max_length: int = c.MAX_LENGTH
        self.layer: str = c.LAYER
        self.layer_idx: int = LAYER_INDEX[c.LAYER]
        self.full_config = build_text_config(Config(c.CONFIG).to_dict(), self.where,
                                             base=OPENCLIP_TEXT_ARCHS[c.ARCH])
        model_cls = getattr(transformers, self.model_class)
        local = local_model_dir(c.PRETRAINED_MODEL, self.where)
        model = load_text_model(local, self.where, self.logger, model_cls) if local else model_cls(self.full_config)
        self.transformer = nest_text_model(model)
        if self.text_config.max_position_embeddings < self.max_length:
            raise ConfigError(f"'{self.where}.MAX_LENGTH': {self.max_length} exceeds the model's "
                              f'{self.text_config.max_position_embeddings} positions')
        self.tokenizer = OpenClipTokenizer({'PRETRAINED_PATH': c.TOKENIZER_PATH, 'LENGTH': self.max_length},
                                           logger=self.logger)
        if self.freeze_flag:
            self.freeze()

    @property
    def text_model(self) -> nn.Module:
        return self.transformer.text_model

    @property
    def text_config(self) -> Any:
        return self.text_model.config

    @property
    def depth(self) -> int:
        return len(self.text_model.encoder.layers)

    def run(self, tokens: torch.Tensor) -> Any:
        """The transformers output for token ids, with every hidden state."""
        device = self.text_model.embeddings.token_embedding.weight.device
        with torch.set_grad_enabled(self.use_grad and torch.is_grad_enabled()):
            return self.transformer(input_ids=tokens.to(device), output_hidden_states=True)

    def encode(self, text: str | list[str], **kwargs: Any) -> Any:
        """Prompts -> embeddings, tokenized with this embedder's own tokenizer."""
        return self.encode_text(self.tokenizer(text), **kwargs)

    def forward(self, tokens: torch.Tensor, **kwargs: Any) -> Any:
        return self.encode_text(tokens, **kwargs)


@EMBEDDERS.register_class()
class FrozenOpenCLIPEmbedder(OpenCLIPTextEmbedder):
    """SD2's text encoder: token ids [B, L] -> the final-layer-normed output of the last
    (LAYER last) or next-to-last (penultimate) block [B, L, D]. For penultimate the unused last
    block is not kept, as in diffusers' SD2 `text_encoder` (23 of ViT-H's 24 blocks): a full-depth
    tower (CONFIG's depth) read from PRETRAINED_MODEL is cut, a cut one is used as it is."""

    def __init__(self, cfg: Config | dict | None = None, logger: logging.Logger | None = None):
        super().__init__(cfg, logger=logger)
        full, used = self.full_config.num_hidden_layers, self.full_config.num_hidden_layers - self.layer_idx
        if self.depth == full and self.layer_idx:
            self.text_model.encoder.layers = self.text_model.encoder.layers[:used]
            self.text_config.num_hidden_layers = used
        elif self.depth != used:
            raise ConfigError(f"'{self.where}.PRETRAINED_MODEL': the text model has {self.depth} blocks; LAYER "
                              f'{self.layer} of a {full}-block tower needs {full} or {used} (set CONFIG.num_hidden_layers)')

    def encode_text(self, tokens: torch.Tensor, tokenizer: Any = None,
                    append_sentence_embedding: bool = False) -> torch.Tensor:
        """Token ids [B, L] -> context [B, L, D]; Scepter's signature (the extra arguments are unused)."""
        return self.run(tokens).last_hidden_state


@EMBEDDERS.register_class()
class FrozenOpenCLIPEmbedder2(OpenCLIPTextEmbedder):
    """SDXL's second text encoder (CLIPTextModelWithProjection): token ids [B, L] -> the raw
    output of the chosen block [B, L, D], and with ALWAYS_RETURN_POOLED also the projected
    end-token embedding [B, P] (SGM / diffusers: penultimate states without the final norm,
    pooled from the normed last block). LEGACY returns only the normed chosen block."""

    model_class = 'CLIPTextModelWithProjection'
    para_dict = {
        'ARCH': {'value': 'ViT-bigG-14', 'choices': tuple(OPENCLIP_TEXT_ARCHS), 'description': 'OpenCLIP architecture.'},
        'ALWAYS_RETURN_POOLED': {'value': False, 'description': 'Return (hidden states, pooled projection).'},
        'LEGACY': {'value': True, 'description': "Scepter's legacy output: the final norm applied to the chosen "
                                                 'block, no pooled output (needs ALWAYS_RETURN_POOLED false).'},
    }

    def __init__(self, cfg: Config | dict | None = None, logger: logging.Logger | None = None):
        super().__init__(cfg, logger=logger)
        self.return_pooled: bool = self.cfg.ALWAYS_RETURN_POOLED
        self.legacy: bool = self.cfg.LEGACY
        if self.return_pooled and self.legacy:
            raise ConfigError(f"'{self.where}.LEGACY': the legacy output has no pooled embedding; "
                              f'set LEGACY false to use ALWAYS_RETURN_POOLED')

    def encode_text(self, tokens: torch.Tensor, tokenizer: Any = None,
                    append_sentence_embedding: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        out = self.run(tokens)
        z = out.hidden_states[-1 - self.layer_idx]
        if self.legacy:
            return self.text_model.final_layer_norm(z)
        return (z, out.text_embeds) if self.return_pooled else z

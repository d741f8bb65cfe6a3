"""SD3's text conditions with the keys of Scepter's SD3 recipes: `FrozenCLIPEmbedder2`
(CLIP-L or bigG with projection: penultimate states + projected pooled), `T5EmbedderHF`
and `SD3TextEmbedder`, which joins them as diffusers' StableDiffusion3Pipeline does: the two
CLIP state sets side by side, zero-padded to T5's width, then the T5 tokens after them;
the pooled vectors concatenated."""
from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F

from ...config import Config
from ...registry import EMBEDDERS
from .base import BaseEmbedder
from .hf import DTYPES, clean_text, load_text_encoder, tokenize

LAYERS = ('penultimate', 'last')


@EMBEDDERS.register_class()
class FrozenCLIPEmbedder2(BaseEmbedder):
    """CLIPTextModelWithProjection: prompts -> hidden states (and the projected pooled output)."""

    para_dict = {
        'PRETRAINED_MODEL': {'value': None, 'type': str, 'description': 'Directory (or ms://, hf:// URI) of the model.'},
        'TOKENIZER_PATH': {'value': None, 'type': str, 'description': 'Tokenizer directory (default PRETRAINED_MODEL).'},
        'MAX_LENGTH': {'value': 77, 'description': 'Tokens per prompt.'},
        'LAYER': {'value': 'penultimate', 'choices': LAYERS, 'description': 'Which hidden states encode returns.'},
        'RETURN_POOLED': {'value': True, 'description': 'Also return the projected pooled output.'},
        'USE_FINAL_LAYER_NORM': {'value': False, 'description': 'Apply the final layer norm to the hidden states.'},
        'IS_TRAINABLE': {'value': False, 'description': "Accepted for Scepter's recipes (FREEZE decides)."},
        'D_TYPE': {'value': 'float32', 'choices': tuple(DTYPES), 'description': 'Weights dtype.'},
        'CONFIG': {'value': None, 'type': dict, 'description': 'CLIPTextConfig fields: with no PRETRAINED_MODEL, '
                                                               'builds the architecture (random weights, no tokenizer).'},
    }

    def __init__(self, cfg: Config | dict | None = None, logger: logging.Logger | None = None):
        super().__init__(cfg, logger=logger)
        c = self.cfg
        self.hf_module, self.tokenizer = load_text_encoder(
            'CLIPTextModelWithProjection', c.PRETRAINED_MODEL, 'CLIPTokenizer', c.TOKENIZER_PATH, DTYPES[c.D_TYPE],
            c.path or type(self).__name__, ('PRETRAINED_MODEL', 'TOKENIZER_PATH'), c.CONFIG)
        if c.FREEZE:
            self.freeze()

    def encode(self, text: str | list[str], **kwargs: Any) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        texts = [text] if isinstance(text, str) else list(text)
        ids = tokenize(self.tokenizer, texts, self.cfg.MAX_LENGTH).to(next(self.hf_module.parameters()).device)
        with torch.set_grad_enabled(self.cfg.USE_GRAD and torch.is_grad_enabled()):
            out = self.hf_module(input_ids=ids, output_hidden_states=True)
        hidden = out.hidden_states[-2] if self.cfg.LAYER == 'penultimate' else out.last_hidden_state
        if self.cfg.USE_FINAL_LAYER_NORM:
            hidden = self.hf_module.text_model.final_layer_norm(hidden)
        return (hidden, out.text_embeds) if self.cfg.RETURN_POOLED else hidden


@EMBEDDERS.register_class()
class T5EmbedderHF(BaseEmbedder):
    """T5EncoderModel: prompts -> token states [B, LENGTH, D]."""

    para_dict = {
        'PRETRAINED_MODEL': {'value': None, 'type': str, 'description': 'Directory (or ms://, hf:// URI) of the model.'},
        'TOKENIZER_PATH': {'value': None, 'type': str, 'description': 'Tokenizer directory (default PRETRAINED_MODEL).'},
        'LENGTH': {'value': 256, 'description': 'Tokens per prompt (SD3 pipelines: 256).'},
        'CLEAN': {'value': 'whitespace', 'choices': ('whitespace', 'none'), 'description': 'Collapse whitespace.'},
        'T5_DTYPE': {'value': 'float32', 'choices': tuple(DTYPES), 'description': 'Weights dtype.'},
    }

    def __init__(self, cfg: Config | dict | None = None, logger: logging.Logger | None = None):
        super().__init__(cfg, logger=logger)
        c = self.cfg
        self.hf_module, self.tokenizer = load_text_encoder(
            'T5EncoderModel', c.PRETRAINED_MODEL, 'T5Tokenizer', c.TOKENIZER_PATH, DTYPES[c.T5_DTYPE],
            c.path or type(self).__name__, ('PRETRAINED_MODEL', 'TOKENIZER_PATH'))
        if c.FREEZE:
            self.freeze()

    def encode(self, text: str | list[str], **kwargs: Any) -> torch.Tensor:
        texts = [clean_text(t, self.cfg.CLEAN) for t in ([text] if isinstance(text, str) else text)]
        ids = tokenize(self.tokenizer, texts, self.cfg.LENGTH).to(next(self.hf_module.parameters()).device)
        with torch.set_grad_enabled(self.cfg.USE_GRAD and torch.is_grad_enabled()):
            return self.hf_module(input_ids=ids).last_hidden_state


@EMBEDDERS.register_class()
class SD3TextEmbedder(BaseEmbedder):
    """CLIP-L + CLIP-bigG + T5 -> {'crossattn': [B, 77 + L, D_t5], 'y': [B, 768 + 1280]}."""

    output_fields = ('crossattn', 'y')  # what encode returns (the embedding cache stores each)

    para_dict = {
        'CLIP_L': {'value': {'NAME': 'FrozenCLIPEmbedder2'}, 'registry': 'EMBEDDERS', 'description': 'CLIP-L block.'},
        'CLIP_G': {'value': {'NAME': 'FrozenCLIPEmbedder2'}, 'registry': 'EMBEDDERS', 'description': 'CLIP-bigG block.'},
        'T5_XXL': {'value': {'NAME': 'T5EmbedderHF'}, 'registry': 'EMBEDDERS',
                   'description': 'T5 block; null puts zeros of T5_SHAPE in its place (as the pipelines do).'},
        'T5_SHAPE': {'value': [256, 4096], 'description': 'Tokens and width of the zeros standing for a missing T5.'},
        'P_ZERO': {'value': 0.0, 'description': "Accepted for Scepter's recipes (the network's P_ZERO drops captions)."},
    }

    def __init__(self, cfg: Config | dict | None = None, logger: logging.Logger | None = None):
        super().__init__(cfg, logger=logger)
        self.clip_l = EMBEDDERS.build(self.cfg.CLIP_L, logger=self.logger)
        self.clip_g = EMBEDDERS.build(self.cfg.CLIP_G, logger=self.logger)
        self.t5_xxl = EMBEDDERS.build(self.cfg.T5_XXL, logger=self.logger) if self.cfg.T5_XXL else None

    def encode(self, text: str | list[str], **kwargs: Any) -> dict[str, torch.Tensor]:
        texts = [text] if isinstance(text, str) else list(text)
        (hidden_l, pooled_l), (hidden_g, pooled_g) = self.clip_l.encode(texts), self.clip_g.encode(texts)
        clip = torch.cat([hidden_l, hidden_g], dim=-1)
        if self.t5_xxl is not None:
            t5 = self.t5_xxl.encode(texts).to(clip.dtype)
        else:
            t5 = clip.new_zeros(len(texts), *self.cfg.T5_SHAPE)
        clip = F.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        return {'crossattn': torch.cat([clip, t5], dim=-2), 'y': torch.cat([pooled_l, pooled_g], dim=-1)}

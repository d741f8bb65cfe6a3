"""SD1.5's text encoder: transformers' CLIPTextModel behind Scepter's FrozenCLIPEmbedder."""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator

import torch
from torch import nn

from ...config import Config
from ...errors import CheckpointError, ConfigError, did_you_mean
from ...fs import FS, FileNotAvailable
from ...registry import EMBEDDERS
from ..tokenizers.clip_tokenizer import ClipTokenizer
from .base import BaseEmbedder

# The text tower of CLIP ViT-L/14, which SD1.5 conditions on (123,060,480 parameters).
VIT_L14_TEXT_CONFIG = {
    'vocab_size': 49408, 'hidden_size': 768, 'intermediate_size': 3072, 'num_hidden_layers': 12,
    'num_attention_heads': 12, 'max_position_embeddings': 77, 'hidden_act': 'quick_gelu',
    'layer_norm_eps': 1e-5, 'bos_token_id': 49406, 'eos_token_id': 49407,
}


class TextModelHolder(nn.Module):
    """Puts a CLIPTextModel under `.text_model`. transformers < 5 nests the text
    transformer there itself; 5.x flattened it. Either way our state-dict keys stay
    `transformer.text_model.*`, those of the original SD checkpoint."""

    def __init__(self, text_model: nn.Module):
        super().__init__()
        self.text_model = text_model

    def forward(self, **kwargs: Any) -> Any:
        return self.text_model(**kwargs)


def nest_text_model(model: nn.Module) -> nn.Module:
    return model if hasattr(model, 'text_model') else TextModelHolder(model)


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' load report (a CLIPModel directory lists every vision weight
    as unexpected); missing weights are checked by the caller instead."""
    from transformers.utils import logging as hf_logging
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def load_text_model(directory: str, where: str, logger: logging.Logger, model_cls: type | None = None) -> nn.Module:
    """A CLIPTextModel (or `model_cls`, e.g. CLIPTextModelWithProjection) from a transformers
    directory (that class's own, or a full CLIPModel's)."""
    if model_cls is None:
        from transformers import CLIPTextModel as model_cls
    try:
        with _quiet_transformers():
            model, info = model_cls.from_pretrained(directory, output_loading_info=True)
    except Exception as e:
        raise CheckpointError(f"'{where}': cannot load a CLIP text model from '{directory}': "
                              f'{type(e).__name__}: {e}') from e
    missing = sorted(info.get('missing_keys') or ())
    if missing:
        raise CheckpointError(f"'{where}': '{directory}' lacks {len(missing)} text-model weights "
                              f"(e.g. '{missing[0]}')")
    if info.get('unexpected_keys'):
        logger.info(f"{where}: ignored {len(info['unexpected_keys'])} non-text weights in '{directory}'")
    return model.float()  # SD keeps its text encoder in fp32; autocast handles half precision


def build_text_config(overrides: dict, where: str, base: dict | None = None):
    """CLIPTextConfig from `base` (ViT-L/14's text config by default) with `overrides` on top."""
    from transformers import CLIPTextConfig
    known = CLIPTextConfig().to_dict()
    for key in overrides:
        if key not in known:
            raise ConfigError(f"'{where}.CONFIG.{key}': not a CLIPTextConfig field." +
                              did_you_mean(key, known))
    return CLIPTextConfig(**{**(base or VIT_L14_TEXT_CONFIG), **overrides})


def local_model_dir(uri: str | None, where: str) -> str | None:
    """The local directory behind a PRETRAINED_MODEL value (None stays None)."""
    if not uri:
        return None
    try:
        return str(FS.get_dir_to_local_dir(uri, wait_finish=True))
    except FileNotAvailable as e:
        raise FileNotAvailable(f"'{where}.PRETRAINED_MODEL': {e}") from e


@EMBEDDERS.register_class()
class FrozenCLIPEmbedder(BaseEmbedder):
    """CLIP text encoder: token ids [B, L] -> context [B, L, D] (LAYER last or hidden)
    or [B, 1, D] (pooled). Weights come from PRETRAINED_MODEL, or CONFIG builds the
    architecture with random weights (to load a full SD checkpoint, or train from scratch)."""

    LAYERS = ('last', 'pooled', 'hidden')
    para_dict = {
        'PRETRAINED_MODEL': {'value': None, 'type': str,
                             'description': 'Directory (or ms://, hf:// URI) with a transformers CLIP '
                                            'config.json + weights; null: build CONFIG with random weights.'},
        'CONFIG': {'value': VIT_L14_TEXT_CONFIG, 'type': dict,
                   'description': 'CLIPTextConfig fields over the CLIP ViT-L/14 text config; used only '
                                  'when PRETRAINED_MODEL is null.'},
        'TOKENIZER_PATH': {'value': None, 'type': str,
                           'description': 'Tokenizer directory (or URI); null: the one in PRETRAINED_MODEL, '
                                          'else the packaged CLIP vocabulary.'},
        'MAX_LENGTH': {'value': 77, 'description': 'Tokens per prompt for encode().'},
        'LAYER': {'value': 'last', 'choices': LAYERS,
                  'description': 'Output: last hidden state, pooled (end token) state, '
                                 'or hidden_states[LAYER_IDX].'},
        'LAYER_IDX': {'value': None, 'type': int,
                      'description': 'Index into hidden_states (0 = embeddings, -1 = last block; negative '
                                     'counts from the end) when LAYER is hidden.'},
        'USE_FINAL_LAYER_NORM': {'value': False,
                                 'description': 'Apply the final layer norm to pooled or hidden outputs.'},
    }

    def __init__(self, cfg: Config | dict | None = None, logger: logging.Logger | None = None):
        super().__init__(cfg, logger=logger)
        # Scepter's attribute names, which user subclasses of the seed's class read.
        self.use_grad: bool = self.cfg.USE_GRAD
        self.freeze_flag: bool = self.cfg.FREEZE
        self.max_length: int = self.cfg.MAX_LENGTH
        self.layer: str = self.cfg.LAYER
        self.layer_idx: int | None = self.cfg.LAYER_IDX
        self.use_final_layer_norm: bool = self.cfg.USE_FINAL_LAYER_NORM
        where = self.cfg.path or type(self).__name__
        local = local_model_dir(self.cfg.PRETRAINED_MODEL, where)
        if local:
            text_model = load_text_model(local, where, self.logger)
        else:
            from transformers import CLIPTextModel
            text_model = CLIPTextModel(build_text_config(Config(self.cfg.CONFIG).to_dict(), where))
        self.transformer = nest_text_model(text_model)
        self.tokenizer = ClipTokenizer({'PRETRAINED_PATH': self.cfg.TOKENIZER_PATH or local, 'LENGTH': self.max_length},
                                       logger=self.logger)
        self._check_layer(where)
        if self.freeze_flag:
            self.freeze()  # TrainModule.freeze: no grad, and eval mode that a parent's .train() keeps

    def _check_layer(self, where: str) -> None:
        config = self.transformer.text_model.config
        if self.max_length > config.max_position_embeddings:
            raise ConfigError(f"'{where}.MAX_LENGTH': {self.max_length} exceeds the model's "
                              f'{config.max_position_embeddings} positions')
        n = config.num_hidden_layers
        if self.layer == 'hidden' and (self.layer_idx is None or not -(n + 1) <= self.layer_idx <= n):
            raise ConfigError(f"'{where}.LAYER_IDX': LAYER hidden needs an index into the {n + 1} "
                              f'hidden states ({-(n + 1)}..{n}), got {self.layer_idx!r}')

    def _encode_text(self, tokens: torch.Tensor, tokenizer: Any = None,
                     append_sentence_embedding: bool = False) -> torch.Tensor:
        out = self.transformer(input_ids=tokens, output_hidden_states=self.layer == 'hidden')
        if self.layer == 'last':
            return out.last_hidden_state
        z = out.pooler_output[:, None, :] if self.layer == 'pooled' else out.hidden_states[self.layer_idx]
        return self.transformer.text_model.final_layer_norm(z) if self.use_final_layer_norm else z

    def encode_text(self, tokens: torch.Tensor, tokenizer: Any = None,
                    append_sentence_embedding: bool = False) -> torch.Tensor:
        """Token ids [B, L] -> embeddings; without USE_GRAD no graph is built. `tokenizer` and
        `append_sentence_embedding` keep Scepter's signature and are unused here."""
        device = self.transformer.text_model.embeddings.token_embedding.weight.device
        with torch.set_grad_enabled(self.use_grad and torch.is_grad_enabled()):
            return self._encode_text(tokens.to(device), tokenizer, append_sentence_embedding)

    def encode(self, text: str | list[str], **kwargs: Any) -> torch.Tensor:
        """Prompts -> embeddings, tokenized with this embedder's own tokenizer."""
        return self.encode_text(self.tokenizer(text), **kwargs)

    def forward(self, tokens: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return self.encode_text(tokens, **kwargs)

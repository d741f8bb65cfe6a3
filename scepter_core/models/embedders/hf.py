"""Text encoders of the flow transformers, with the keys of Scepter's FLUX / SD3 recipes:
`HFEmbedder` (any transformers text model + its tokenizer from the model's own files: T5
for FLUX and SD3, CLIP for the pooled vector) and `T5PlusClipFluxEmbedder` (FLUX's pair).

Prompts are tokenized and encoded as diffusers' Flux / SD3 pipelines do: padded to
MAX_LENGTH, truncated, no attention mask."""
from __future__ import annotations

import logging
import re
from typing import Any

import torch

from ...config import Config
from ...errors import CheckpointError
from ...fs import FS, FileNotAvailable
from ...registry import EMBEDDERS
from .base import BaseEmbedder
from .clip import _quiet_transformers

MODEL_CLASSES = ('T5EncoderModel', 'UMT5EncoderModel', 'CLIPTextModel', 'CLIPTextModelWithProjection')
TOKENIZER_CLASSES = ('T5Tokenizer', 'T5TokenizerFast', 'CLIPTokenizer', 'CLIPTokenizerFast', 'AutoTokenizer')
OUTPUTS = ('last_hidden_state', 'pooler_output', 'text_embeds', 'penultimate')
DTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}


def _local(uri: str | None, key: str) -> str:
    if not uri:
        raise FileNotAvailable(f"'{key}': a directory (or ms://, hf:// URI) is required")
    try:
        return str(FS.get_dir_to_local_dir(uri, wait_finish=True))
    except FileNotAvailable as e:
        raise FileNotAvailable(f"'{key}': {e}") from e


def load_tokenizer(cls_name: str, directory: str, where: str) -> Any:
    """The named transformers tokenizer from `directory`; a vocabulary saved only as
    tokenizer.json (no sentencepiece model) loads through the fast class of the same family."""
    import transformers
    names = [cls_name] + ([cls_name + 'Fast'] if not cls_name.endswith(('Fast', 'AutoTokenizer')) else [])
    errors = []
    for name in names:
        try:
            return getattr(transformers, name).from_pretrained(directory)
        except Exception as e:  # noqa: BLE001 - reported below with every class tried
            errors.append(f'{name}: {type(e).__name__}: {e}')
    raise CheckpointError(f"'{where}': cannot load a tokenizer from '{directory}' ({'; '.join(errors)})")


def load_text_encoder(model_cls: str, model_uri: str | None, tokenizer_cls: str, tokenizer_uri: str | None,
                      dtype: torch.dtype, where: str, keys: tuple[str, str],
                      config: dict | None = None) -> tuple[Any, Any]:
    """(transformers model, tokenizer) from their directories; `keys` name the config keys
    of the two paths in errors. The tokenizer defaults to the model's directory. Without a
    model directory, `config` (the model config's fields) builds the architecture with random
    weights and no tokenizer: enough to count and plan (`scepter model info`), not to encode."""
    import transformers
    if not model_uri and config:
        cls = getattr(transformers, model_cls)
        return cls(cls.config_class(**config)).to(dtype), None
    model_dir = _local(model_uri, f'{where}.{keys[0]}')
    token_dir = _local(tokenizer_uri, f'{where}.{keys[1]}') if tokenizer_uri else model_dir
    try:
        with _quiet_transformers():
            model = getattr(transformers, model_cls).from_pretrained(model_dir, torch_dtype=dtype)
    except Exception as e:
        raise CheckpointError(f"'{where}.{keys[0]}': cannot load a {model_cls} from '{model_dir}': "
                              f'{type(e).__name__}: {e}') from e
    return model, load_tokenizer(tokenizer_cls, token_dir, f'{where}.{keys[1]}')


def tokenize(tokenizer: Any, texts: list[str], length: int) -> torch.Tensor:
    """Token ids [B, length]: padded to `length` and truncated, as the reference pipelines do."""
    return tokenizer(texts, padding='max_length', max_length=length, truncation=True, return_tensors='pt').input_ids


def clean_text(text: str, mode: str) -> str:
    return re.sub(r'\s+', ' ', text).strip() if mode == 'whitespace' else text


@EMBEDDERS.register_class()
class HFEmbedder(BaseEmbedder):
    """A transformers text encoder: prompts -> OUTPUT_KEY ([B, L, D] hidden states or [B, D] pooled)."""

    para_dict = {
        'HF_MODEL_CLS': {'value': 'T5EncoderModel', 'choices': MODEL_CLASSES, 'description': 'transformers model class.'},
        'MODEL_PATH': {'value': None, 'type': str, 'description': 'Directory (or ms://, hf:// URI) of the model.'},
        'HF_TOKENIZER_CLS': {'value': 'T5Tokenizer', 'choices': TOKENIZER_CLASSES,
                             'description': 'transformers tokenizer class.'},
        'TOKENIZER_PATH': {'value': None, 'type': str, 'description': 'Directory of the tokenizer (default MODEL_PATH).'},
        'MAX_LENGTH': {'value': 77, 'description': 'Tokens per prompt (FLUX-dev T5: 512, schnell: 256, SD3: 256).'},
        'OUTPUT_KEY': {'value': 'last_hidden_state', 'choices': OUTPUTS,
                       'description': 'What encode returns (penultimate: hidden_states[-2]).'},
        'D_TYPE': {'value': 'float32', 'choices': tuple(DTYPES), 'description': 'Weights dtype.'},
        'BATCH_INFER': {'value': True, 'description': "Accepted for Scepter's recipes: prompts are always "
                                                      'encoded as one batch.'},
        'CLEAN': {'value': 'whitespace', 'choices': ('whitespace', 'none'),
                  'description': 'Collapse runs of whitespace in prompts before tokenizing.'},
        'USE_GRAD_CHECKPOINT': {'value': False, 'description': 'Gradient checkpointing when the encoder trains.'},
        'CONFIG': {'value': None, 'type': dict, 'description': 'Model config fields: with no MODEL_PATH, builds the '
                                                               'architecture (random weights, no tokenizer).'},
    }

    def __init__(self, cfg: Config | dict | None = None, logger: logging.Logger | None = None):
        super().__init__(cfg, logger=logger)
        c = self.cfg
        self.hf_module, self.tokenizer = load_text_encoder(
            c.HF_MODEL_CLS, c.MODEL_PATH, c.HF_TOKENIZER_CLS, c.TOKENIZER_PATH, DTYPES[c.D_TYPE],
            c.path or type(self).__name__, ('MODEL_PATH', 'TOKENIZER_PATH'), c.CONFIG)
        if c.USE_GRAD_CHECKPOINT:  # transformers 5 renamed it; older releases have the first name only
            enable = getattr(self.hf_module, 'activation_checkpointing_enable', None) or \
                getattr(self.hf_module, 'gradient_checkpointing_enable')
            enable()
        if c.FREEZE:
            self.freeze()

    def tokenize(self, text: str | list[str]) -> torch.Tensor:
        texts = [text] if isinstance(text, str) else list(text)
        return tokenize(self.tokenizer, [clean_text(t, self.cfg.CLEAN) for t in texts], self.cfg.MAX_LENGTH)

    def encode_text(self, tokens: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        key = self.cfg.OUTPUT_KEY
        device = next(self.hf_module.parameters()).device
        with torch.set_grad_enabled(self.cfg.USE_GRAD and torch.is_grad_enabled()):
            out = self.hf_module(input_ids=tokens.to(device), output_hidden_states=key == 'penultimate')
        return out.hidden_states[-2] if key == 'penultimate' else getattr(out, key)

    def encode(self, text: str | list[str], **kwargs: Any) -> torch.Tensor:
        return self.encode_text(self.tokenize(text))

    def forward(self, text: str | list[str], **kwargs: Any) -> torch.Tensor:
        return self.encode(text)


@EMBEDDERS.register_class()
class T5PlusClipFluxEmbedder(BaseEmbedder):
    """FLUX's conditions: T5 token states ('crossattn' [B, L, 4096]) and CLIP-L's pooled
    output ('y' [B, 768])."""

    output_fields = ('crossattn', 'y')  # what encode returns (the embedding cache stores each)

    para_dict = {
        'T5_MODEL': {'value': {'NAME': 'HFEmbedder', 'MAX_LENGTH': 512}, 'registry': 'EMBEDDERS',
                     'description': 'The T5 encoder block.'},
        'CLIP_MODEL': {'value': {'NAME': 'HFEmbedder', 'HF_MODEL_CLS': 'CLIPTextModel', 'HF_TOKENIZER_CLS':
                                 'CLIPTokenizer', 'OUTPUT_KEY': 'pooler_output'},
                       'registry': 'EMBEDDERS', 'description': 'The CLIP encoder block (pooled output).'},
    }

    def __init__(self, cfg: Config | dict | None = None, logger: logging.Logger | None = None):
        super().__init__(cfg, logger=logger)
        self.t5_model = EMBEDDERS.build(self.cfg.T5_MODEL, logger=self.logger)
        self.clip_model = EMBEDDERS.build(self.cfg.CLIP_MODEL, logger=self.logger)

    def encode(self, text: str | list[str], **kwargs: Any) -> dict[str, torch.Tensor]:
        return {'crossattn': self.t5_model.encode(text), 'y': self.clip_model.encode(text)}

    def forward(self, text: str | list[str], **kwargs: Any) -> dict[str, torch.Tensor]:
        return self.encode(text)

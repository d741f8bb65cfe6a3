"""The CLIP BPE tokenizer (SD1.5's), with a packaged vocabulary so no hub is needed."""
from __future__ import annotations

import html
import logging
from functools import lru_cache
from pathlib import Path

import torch

from ...config import Config
from ...errors import ConfigError
from ...fs import FS, FileNotAvailable
from ...registry import TOKENIZERS
from .base import BaseTokenizer

# Derived from open_clip's bpe_simple_vocab_16e6.txt.gz by tools/make_clip_vocab.py.
PACKAGED_VOCAB = Path(__file__).resolve().parents[2] / 'assets' / 'clip_tokenizer'


def clean_prompt(text: str) -> str:
    """The original CLIP tokenizer's text preparation: repair mojibake with ftfy,
    unescape HTML (twice, for double-escaped scrapes), collapse whitespace, lowercase."""
    import ftfy
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return ' '.join(text.split()).lower()


def has_tokenizer_files(directory: str | Path) -> bool:
    """True when `directory` holds a tokenizer transformers can read."""
    d = Path(directory)
    return (d / 'tokenizer.json').is_file() or ((d / 'vocab.json').is_file() and (d / 'merges.txt').is_file())


def _read_clip_tokenizer(directory: str):
    from transformers import CLIPTokenizer
    try:
        return CLIPTokenizer.from_pretrained(directory)
    except Exception as e:
        raise ConfigError(f"cannot read the CLIP tokenizer in '{directory}': {type(e).__name__}: {e}") from e


@lru_cache(maxsize=1)
def packaged_clip_tokenizer():
    """transformers' CLIPTokenizer over the packaged vocabulary (read once per process)."""
    return _read_clip_tokenizer(str(PACKAGED_VOCAB))


def load_clip_tokenizer(path: str | None, logger: logging.Logger, owner: str = 'ClipTokenizer'):
    """The tokenizer in `path` (local, remote or hub URI) when it has tokenizer files there;
    otherwise the packaged CLIP vocabulary, saying so in one info line."""
    if path:
        try:
            local = str(FS.get_dir_to_local_dir(path, wait_finish=True))
        except FileNotAvailable:
            local = None
        if local is not None and has_tokenizer_files(local):
            return _read_clip_tokenizer(local)
        logger.info(f"{owner}: no tokenizer files available offline at '{path}'; "
                    f'using the packaged CLIP vocabulary')
    else:
        logger.info(f'{owner}: no PRETRAINED_PATH; using the packaged CLIP vocabulary')
    return packaged_clip_tokenizer()


@TOKENIZERS.register_class()
class ClipTokenizer(BaseTokenizer):
    """CLIP's byte-level BPE: `tokenizer(texts) -> LongTensor [B, LENGTH]`, each row
    `<|startoftext|> ... <|endoftext|>` padded with `<|endoftext|>` (49407) as SD1.5 does;
    long prompts are cut so that the end token stays last."""

    para_dict = {
        'PRETRAINED_PATH': {'value': None, 'type': str,
                            'description': 'Directory (or ms://, hf:// URI) with vocab.json + merges.txt '
                                           'or tokenizer.json; null or unavailable: the packaged vocabulary.'},
        'LENGTH': {'value': 77, 'description': 'Token ids per prompt, start and end tokens included.'},
        'CLEAN': {'value': True, 'description': 'Repair (ftfy), HTML-unescape and whitespace-normalise '
                                                'prompts first, as the original CLIP tokenizer does.'},
    }

    def __init__(self, cfg: Config | dict | None = None, logger: logging.Logger | None = None):
        super().__init__(cfg, logger)
        if self.cfg.LENGTH < 2:
            raise ConfigError(f"'{self.cfg.path or 'ClipTokenizer'}.LENGTH': needs room for the start "
                              f'and end tokens (>= 2), got {self.cfg.LENGTH}')
        self.tokenizer = load_clip_tokenizer(self.cfg.PRETRAINED_PATH, self.logger,
                                             owner=self.cfg.path or type(self).__name__)
        self.length: int = self.cfg.LENGTH
        self.model_max_length: int = self.cfg.LENGTH
        self.vocab_size: int = len(self.tokenizer)

    def __call__(self, texts: str | list[str]) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            return torch.empty(0, self.length, dtype=torch.long)
        if self.cfg.CLEAN:
            texts = [clean_prompt(t) for t in texts]
        # The tokenizer itself still lowercases and collapses whitespace: the vocabulary
        # has no upper-case words, so that part is not optional.
        return self.tokenizer(texts, padding='max_length', truncation=True, max_length=self.length,
                              return_tensors='pt').input_ids


@TOKENIZERS.register_class()
class OpenClipTokenizer(ClipTokenizer):
    """OpenCLIP's tokenizer (SD2's, SDXL's second encoder): the same BPE as ClipTokenizer,
    but rows are padded with id 0 after the end token (open_clip.tokenize; diffusers'
    `tokenizer_2` pads with '!', which is id 0)."""

    PAD_ID = 0

    def __call__(self, texts: str | list[str]) -> torch.Tensor:
        ids = super().__call__(texts)
        eos = self.tokenizer.eos_token_id
        after_end = (ids == eos).int().cumsum(dim=1) - (ids == eos).int() > 0  # past the first end token
        return ids.masked_fill(after_end, self.PAD_ID)

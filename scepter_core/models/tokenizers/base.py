"""Base of text tokenizers: text in, a LongTensor of token ids out."""
from __future__ import annotations

import torch

from ...base import BaseObject


class BaseTokenizer(BaseObject):
    """`tokenizer(texts) -> LongTensor [B, LENGTH]`; `vocab_size` is the number of ids."""

    vocab_size: int = 0

    def __call__(self, texts: str | list[str]) -> torch.Tensor:
        raise NotImplementedError(f'{type(self).__name__} does not implement __call__')

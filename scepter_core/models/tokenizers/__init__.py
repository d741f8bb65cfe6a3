"""Text tokenizers; importing this package registers them."""
from .base import BaseTokenizer  # noqa: F401
from .clip_tokenizer import ClipTokenizer, OpenClipTokenizer, clean_prompt  # noqa: F401

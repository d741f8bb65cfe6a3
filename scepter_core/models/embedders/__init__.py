"""Condition embedders (text encoders); importing this package registers them."""
from .base import BaseEmbedder  # noqa: F401
from .clip import FrozenCLIPEmbedder  # noqa: F401
from .hf import HFEmbedder, T5PlusClipFluxEmbedder  # noqa: F401

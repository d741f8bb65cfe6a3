"""Condition embedders (text encoders); importing this package registers them."""
from .base import BaseEmbedder  # noqa: F401
from .clip import FrozenCLIPEmbedder  # noqa: F401
from .hf import HFEmbedder, T5PlusClipFluxEmbedder  # noqa: F401
from .sd3 import FrozenCLIPEmbedder2, SD3TextEmbedder, T5EmbedderHF  # noqa: F401

"""Condition embedders (text encoders, size embeddings, conditioners); importing this package
registers them."""
from .base import BaseEmbedder  # noqa: F401
from .clip import FrozenCLIPEmbedder  # noqa: F401
from .conditioner import GeneralConditioner  # noqa: F401
from .hf import HFEmbedder, T5PlusClipFluxEmbedder  # noqa: F401
from .openclip import FrozenOpenCLIPEmbedder, FrozenOpenCLIPEmbedder2  # noqa: F401
from .sd3 import FrozenCLIPEmbedder2, SD3TextEmbedder, T5EmbedderHF  # noqa: F401
from .timestep_nd import ConcatTimestepEmbedderND  # noqa: F401

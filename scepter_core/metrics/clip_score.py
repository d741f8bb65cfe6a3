"""CLIP score of generated images against their prompts, from a local CLIP directory.

torchmetrics' CLIPScore accepts a callable returning (model, processor). Two small
adapters make a transformers 5.x CLIP fit it: `get_*_features` there return an output
object (the projected embedding is its `pooler_output`) where torchmetrics expects a
tensor, and prompts longer than the text encoder are truncated by the tokenizer, which
keeps the end-of-text token the pooling reads."""
from __future__ import annotations

import logging
from typing import Any

from torch import Tensor, nn

from ..config import Config
from ..errors import CheckpointError, ConfigError
from ..fs import FS
from ..registry import METRICS
from .base import BaseMetric


def _embedding(out: Any) -> Tensor:
    return out if isinstance(out, Tensor) else out.pooler_output


class CLIPFeatures(nn.Module):
    """A CLIPModel whose feature methods return the projected embeddings as tensors."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    @property
    def config(self) -> Any:
        return self.model.config

    def get_image_features(self, pixel_values: Tensor) -> Tensor:
        return _embedding(self.model.get_image_features(pixel_values=pixel_values))

    def get_text_features(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return _embedding(self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask))


class TruncatingProcessor:
    """A CLIPProcessor that truncates text to the text encoder's length."""

    def __init__(self, processor: Any, max_length: int):
        self.processor = processor
        self.max_length = max_length

    def __call__(self, text: list[str] | None = None, images: list[Tensor] | None = None,
                 **kwargs: Any) -> Any:
        if text is not None:
            kwargs.update(truncation=True, max_length=self.max_length)
        return self.processor(text=text, images=images, **kwargs)


def load_clip(path: str, key: str) -> tuple[CLIPFeatures, TruncatingProcessor]:
    """The CLIP model and processor in the directory `path` (local, or a mirrored hub path)."""
    from transformers import CLIPModel, CLIPProcessor
    if not path:
        raise ConfigError(f'{key} is not set: give a local CLIP directory (transformers layout: '
                          'config.json, model.safetensors, tokenizer and image processor files)')
    try:
        local = str(FS.get_dir_to_local_dir(path))
    except FileNotFoundError as e:
        raise CheckpointError(f"{key}: CLIP directory '{path}' not found: place a transformers CLIP model "
                              'there; nothing is downloaded at run time') from e
    try:
        model = CLIPModel.from_pretrained(local)
        processor = CLIPProcessor.from_pretrained(local)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{key}: '{local}' is not a loadable CLIP directory: "
                              f'{str(e).strip().splitlines()[0]}') from e
    model.eval().requires_grad_(False)
    max_length = model.config.text_config.max_position_embeddings
    return CLIPFeatures(model), TruncatingProcessor(processor, max_length)


@METRICS.register_class()
class CLIPScore(BaseMetric):
    """torchmetrics' CLIP score, max(100 * mean cos(image, prompt), 0); reports `clip_score`."""

    para_dict = {
        'PRETRAINED_MODEL': {'value': None, 'type': str,
                             'description': 'CLIP directory in transformers layout (local path or '
                                            'ms:// / hf:// resolved in the local mirror)'},
    }
    needs_prompts = True

    def __init__(self, cfg: Config | dict | None = None, logger: logging.Logger | None = None):
        super().__init__(cfg, logger=logger)
        model, processor = load_clip(self.cfg.PRETRAINED_MODEL, f'{self.where}.PRETRAINED_MODEL')
        from torchmetrics.multimodal.clip_score import CLIPScore as _TorchmetricsCLIPScore  # at use: slow import
        self.metric = _TorchmetricsCLIPScore(model_name_or_path=lambda: (model, processor))

    def _update(self, images: Tensor, prompts: list[str] | None, references: Tensor | None) -> None:
        # The CLIP processor rescales by 1/255: hand it 8-bit images, as torchmetrics expects.
        self.metric.update((images * 255).round().byte(), list(prompts))

    def _compute(self) -> dict[str, Tensor]:
        return {'clip_score': self.metric.compute()}

"""SDXL text-to-image with the conditioning of diffusers' StableDiffusionXLPipeline, so that
`scepter infer` runs an SDXL diffusers folder or single file with no recipe.

INTERIM: issue 18 part B brings Scepter's own classes (GeneralConditioner,
FrozenOpenCLIPEmbedder2, ConcatTimestepEmbedderND, LatentDiffusionXL); once they land, the
family recipes (scepter_core/families.py) switch to them and this module goes. The state-dict
names are already theirs: `cond_stage_model.embedders.N.transformer.*`."""
from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from ...config import Config
from ...registry import MODELS
from ..backbones.unet_blocks import TimestepEmbedding
from ..embedders.clip import build_text_config, nest_text_model
from ..tokenizers.clip_tokenizer import ClipTokenizer
from .latent_diffusion import LatentDiffusion


class _TextEncoder(nn.Module):
    """One CLIP text model (with its projection when PROJECTION) and its tokenizer."""

    def __init__(self, block: dict, where: str, logger: logging.Logger):
        super().__init__()
        from transformers import CLIPTextModel, CLIPTextModelWithProjection
        cls = CLIPTextModelWithProjection if block.get('PROJECTION') else CLIPTextModel
        self.transformer = nest_text_model(cls(build_text_config(dict(block['CONFIG']), where)))
        self.tokenizer = ClipTokenizer({'PRETRAINED_PATH': block.get('TOKENIZER'),
                                        'LENGTH': block.get('MAX_LENGTH', 77)}, logger=logger)
        self.pad_id: int | None = block.get('PAD_TOKEN_ID')

    def tokens(self, prompts: list[str]) -> torch.Tensor:
        """Token ids; with PAD_TOKEN_ID, every position after the end token holds it (OpenCLIP's
        tokenizer pads with 0 where CLIP's pads with the end token)."""
        ids = self.tokenizer(prompts)
        if self.pad_id is not None:
            end = self.tokenizer.tokenizer.eos_token_id
            after_end = (ids == end).long().cumsum(-1).roll(1, -1)
            after_end[:, 0] = 0
            ids = ids.masked_fill(after_end > 0, self.pad_id)
        return ids

    def forward(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(penultimate hidden states [B, L, D], projected pooled state [B, P] or None)."""
        device = self.transformer.text_model.embeddings.token_embedding.weight.device
        out = self.transformer(input_ids=self.tokens(prompts).to(device), output_hidden_states=True)
        return out.hidden_states[-2], getattr(out, 'text_embeds', None)


class _Conditioner(nn.Module):
    def __init__(self, blocks: list, where: str, logger: logging.Logger):
        super().__init__()
        self.embedders = nn.ModuleList(_TextEncoder(dict(b), f'{where}.{i}', logger) for i, b in enumerate(blocks))


@MODELS.register_class()
class InterimSDXL(LatentDiffusion):
    """LatentDiffusion conditioned as SDXL: context = the penultimate hidden states of every text
    encoder, concatenated; `vector` = the last encoder's projected pooled state followed by the
    sinusoidal embeddings of (height, width, crop top, crop left, height, width) of the image
    asked for; an empty prompt gives zeros (diffusers' force_zeros_for_empty_prompt); the VAE
    runs in float32 (SDXL's overflows in float16)."""

    para_dict = {
        'TEXT_ENCODERS': {'value': [], 'type': list, 'description':
                          'One block per encoder: CONFIG (CLIPTextConfig fields), PROJECTION (bool), '
                          'TOKENIZER (directory), MAX_LENGTH, PAD_TOKEN_ID (null: the tokenizer\'s).'},
        'TIME_EMBED_DIM': {'value': 256, 'description': 'Width of each size number\'s sinusoidal embedding.'},
        'FORCE_ZEROS_FOR_EMPTY_PROMPT': {'value': True, 'description': 'Zero conditioning for an empty prompt.'},
        'COND_STAGE_MODEL': {'value': None, 'registry': 'EMBEDDERS', 'description': 'Unused: TEXT_ENCODERS.'},
        'TOKENIZER': {'value': None, 'registry': 'TOKENIZERS', 'description': 'Unused: each encoder has its own.'},
    }

    def __init__(self, cfg: Config | dict, logger: logging.Logger | None = None):
        super().__init__(cfg, logger=logger)
        self._build_conditioner()
        self._size: tuple[int, int] | None = None  # the image asked for, read by encode_prompts

    def _build_conditioner(self) -> None:
        """The text encoders, built once: LatentDiffusion builds none (COND_STAGE_MODEL null) and
        loads whole-model weights from its constructor, which reaches load_pretrained_model first."""
        if isinstance(self.cond_stage_model, _Conditioner):
            return
        where = f"{self.cfg.path or 'InterimSDXL'}.TEXT_ENCODERS"
        self.cond_stage_model = _Conditioner(list(self.cfg.TEXT_ENCODERS), where, self.logger)
        self.cond_stage_model.requires_grad_(False).eval()
        self.time_features = TimestepEmbedding(self.cfg.TIME_EMBED_DIM)

    def load_pretrained_model(self, path: str, use_ema: bool = False) -> Any:
        self._build_conditioner()
        return super().load_pretrained_model(path, use_ema)

    def encode_prompts(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        states, pooled = [], None
        for encoder in self.cond_stage_model.embedders:
            hidden, pooled = encoder(list(prompts))
            states.append(hidden)
        context = torch.cat(states, dim=-1)
        if self.cfg.FORCE_ZEROS_FOR_EMPTY_PROMPT:
            keep = torch.tensor([bool(p) for p in prompts], device=context.device, dtype=context.dtype)
            context, pooled = context * keep[:, None, None], pooled * keep[:, None]
        h, w = self._size or tuple(self.cfg.IMAGE_SIZE)
        ids = torch.tensor([h, w, 0, 0, h, w], dtype=torch.float32, device=context.device).repeat(len(prompts))
        sizes = self.time_features(ids, len(ids), context.device).reshape(len(prompts), -1)
        return {'crossattn': context, 'vector': torch.cat([pooled, sizes.to(pooled.dtype)], dim=-1)}

    def decode_first_stage(self, z: torch.Tensor) -> torch.Tensor:
        vae = self.first_stage_model
        if next(vae.parameters()).dtype != torch.float32:
            vae.float()
        with torch.autocast(z.device.type, enabled=False):
            return super().decode_first_stage(z.float())

    @torch.no_grad()
    def forward_test(self, prompt: list[str] | None = None, image_size: list[int] | int | None = None,
                     **kwargs: Any) -> list[dict[str, Any]]:
        size = image_size or self.cfg.IMAGE_SIZE
        self._size = (size, size) if isinstance(size, int) else tuple(size)
        return super().forward_test(prompt=prompt, image_size=image_size, **kwargs)


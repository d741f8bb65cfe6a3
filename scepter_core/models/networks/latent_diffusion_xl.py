"""LatentDiffusionXL: SDXL's conditioning on top of LatentDiffusion. Only the condition
changes (a GeneralConditioner over both text encoders and the size embeddings); training and
sampling are LatentDiffusion's. Conventions as diffusers' StableDiffusionXLPipeline: penultimate
states of both encoders (2048), pooled from the second, add_time_ids from each sample's
original size / crop / target size, and zeros as the negative condition of an empty negative
prompt (force_zeros_for_empty_prompt); the VAE in float32."""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator

import torch

from ...config import Config
from ...errors import ConfigError, ScepterError
from ...registry import MODELS
from ..family_table import SDXL_CONDITIONER, SDXL_UNET
from .latent_diffusion import LatentDiffusion


@MODELS.register_class()
class LatentDiffusionXL(LatentDiffusion):
    """Text-to-image latent diffusion with SDXL's conditioning (Scepter's class and keys)."""

    para_dict = {
        'SCALE_FACTOR': {'value': 0.13025, 'type': float, 'description': "Latent scale (SDXL VAE's 0.13025)."},
        'IMAGE_SIZE': {'value': [1024, 1024], 'description': 'Default [height, width] for sampling.'},
        'DIFFUSION_MODEL': {'value': SDXL_UNET, 'registry': 'BACKBONES', 'description': 'The denoiser (takes y).'},
        'COND_STAGE_MODEL': {'value': SDXL_CONDITIONER, 'registry': 'EMBEDDERS',
                             'description': "A GeneralConditioner: 'crossattn' and 'vector' from the batch."},
        'TOKENIZER': {'value': None, 'registry': 'TOKENIZERS',
                      'description': "Unused: each of the conditioner's text embedders tokenizes for itself."},
        'FORCE_ZEROS_FOR_EMPTY_PROMPT': {'value': True, 'description': 'An empty negative prompt conditions on '
                                                                       'zeros (text parts), as SDXL was trained.'},
        'FIRST_STAGE_FP32': {'value': True, 'description': 'Encode and decode with the VAE in float32 (outside '
                                                           "autocast): SDXL's VAE overflows in float16."},
        'AESTHETIC_SCORE': {'value': 6.0, 'description': "The refiner's 'aesthetic_score' when a batch has none."},
        'NEGATIVE_AESTHETIC_SCORE': {'value': 2.5, 'description': "The refiner's score for the negative condition."},
        'LOAD_REFINER': {'value': False, 'description': 'Build REFINER_MODEL for a second, refining pass.'},
        'REFINER_MODEL': {'value': None, 'registry': 'BACKBONES', 'description': 'The refiner UNet.'},
        'REFINER_COND_MODEL': {'value': None, 'registry': 'EMBEDDERS', 'description': "The refiner's conditioner."},
    }

    def __init__(self, cfg: Config | dict, logger: logging.Logger | None = None):
        super().__init__(cfg, logger=logger)
        if self.cfg.LOAD_REFINER:
            raise ConfigError(f"'{self.cfg.path or 'LatentDiffusionXL'}.LOAD_REFINER': the refining pass is not "
                              f'implemented yet; set it false and run the refiner as its own model '
                              f'(scepter infer --refiner)')
        if not hasattr(self.cond_stage_model, 'input_keys') or not hasattr(self.cond_stage_model, 'embedders'):
            raise ConfigError(f"'{self.cfg.path or 'LatentDiffusionXL'}.COND_STAGE_MODEL': expected a "
                              f'GeneralConditioner, got {type(self.cond_stage_model).__name__}')

    @property
    def full_precision_parts(self) -> tuple[str, ...]:
        """Frozen parts that USE_AMP must not hold in half precision: the VAE casts itself back."""
        return ('first_stage_model',) if self.cfg.FIRST_STAGE_FP32 else ()

    @contextlib.contextmanager
    def _first_stage_precision(self, device: torch.device) -> Iterator[None]:
        if not self.cfg.FIRST_STAGE_FP32:
            yield
            return
        vae = self.first_stage_model
        if next(vae.parameters()).dtype != torch.float32:  # cast with the rest (inference in half precision)
            vae.float()
        with torch.autocast(device.type, enabled=False):
            yield

    def encode_first_stage(self, image: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        with self._first_stage_precision(image.device):
            return super().encode_first_stage(image.float() if self.cfg.FIRST_STAGE_FP32 else image, **kwargs)

    def decode_first_stage(self, z: torch.Tensor) -> torch.Tensor:
        with self._first_stage_precision(z.device):
            return super().decode_first_stage(z.float() if self.cfg.FIRST_STAGE_FP32 else z)

    def condition_keys(self) -> tuple[str, ...]:
        return tuple(k for k in self.cond_stage_model.input_keys if k != 'prompt')

    def conditioner_batch(self, prompt: list[str], inputs: dict[str, Any], size: tuple[int, int],
                          negative: bool = False) -> dict[str, Any]:
        """The conditioner's batch: `prompt`, and each size key from `inputs` (a [B, d] tensor from
        the transforms, or one value for all) or, when absent, from `size` as diffusers does
        (original = target = `size`, crop at 0, 0)."""
        h, w = (int(v) for v in size)
        score = self.cfg.NEGATIVE_AESTHETIC_SCORE if negative else self.cfg.AESTHETIC_SCORE
        defaults = {'original_size_as_tuple': [h, w], 'crop_coords_top_left': [0, 0],
                    'target_size_as_tuple': [h, w], 'aesthetic_score': [score]}
        device = next(self.model.parameters()).device
        batch: dict[str, Any] = {'prompt': list(prompt)}
        for key in self.condition_keys():
            value = inputs.get(key, defaults.get(key))
            if value is None:
                raise ScepterError(f"LatentDiffusionXL: the conditioner reads '{key}', which the batch lacks")
            rows = torch.as_tensor(value, dtype=torch.float32, device=device)
            rows = rows.reshape(1, -1).expand(len(prompt), -1) if rows.dim() <= 1 else rows
            if rows.shape[0] != len(prompt):
                raise ScepterError(f"LatentDiffusionXL: '{key}' has {rows.shape[0]} rows for {len(prompt)} prompts")
            batch[key] = rows
        return batch

    def condition(self, prompt: list[str], inputs: dict[str, Any], size: tuple[int, int],
                  train: bool = False) -> dict[str, torch.Tensor]:
        return self.cond_stage_model(self.conditioner_batch(prompt, inputs, size), drop=train)

    def unconditional(self, n_prompt: list[str], inputs: dict[str, Any], size: tuple[int, int]) -> dict[str, torch.Tensor]:
        batch = self.conditioner_batch(n_prompt, inputs, size, negative=True)
        empty = [not p for p in n_prompt]
        if not (self.cfg.FORCE_ZEROS_FOR_EMPTY_PROMPT and any(empty)):
            return self.cond_stage_model(batch)
        zeroed = self.cond_stage_model(batch, force_zero_embeddings=['prompt'])
        if all(empty):
            return zeroed
        encoded = self.cond_stage_model(batch)
        rows = torch.tensor(empty)
        return {k: torch.where(rows.to(v.device).view(-1, *[1] * (v.dim() - 1)), zeroed[k], v)
                for k, v in encoded.items()}

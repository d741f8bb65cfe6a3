"""LatentDiffusionFlux: FLUX.1 (dev, schnell) as one more LatentDiffusion: rectified flow
(FlowMatchDiffusion) over the 16-channel VAE's latents with the FLUX transformer, T5 + CLIP
conditions, and FLUX-dev's distilled guidance: the guidance scale is an input of the
network (`cond['guidance']`, diffusers' `guidance_scale`), not two passes; true
classifier-free guidance on top is optional (TRUE_CFG_SCALE > 1, as diffusers' `true_cfg_scale`)."""
from __future__ import annotations

import logging
from typing import Any

import torch

from ...checkpoint import LoadReport, load_into
from ...config import Config
from ...registry import MODELS
from .latent_diffusion import LatentDiffusion, release_replaced


@MODELS.register_class()
class LatentDiffusionFlux(LatentDiffusion):
    """Text-to-image FLUX: Scepter's `LatentDiffusionFlux` keys."""

    para_dict = {
        'PARAMETERIZATION': {'value': 'rf', 'choices': ('rf',), 'description': 'Rectified flow (the velocity).'},
        'DIFFUSION': {'value': {'NAME': 'FlowMatchDiffusion',
                                'SAMPLER_SCHEDULER': {'NAME': 'FlowMatchFluxShiftScheduler'}},
                      'registry': 'DIFFUSIONS', 'description': 'The flow (DiffusionFluxRF / FlowMatchDiffusion).'},
        'DIFFUSION_MODEL': {'value': {'NAME': 'Flux'}, 'registry': 'BACKBONES', 'description': 'The transformer.'},
        'FIRST_STAGE_MODEL': {'value': {'NAME': 'AutoencoderKLFlux'}, 'registry': 'MODELS',
                              'description': 'The 16-channel VAE (its SCALE_FACTOR / SHIFT_FACTOR apply).'},
        'COND_STAGE_MODEL': {'value': {'NAME': 'T5PlusClipFluxEmbedder'}, 'registry': 'EMBEDDERS',
                             'description': 'T5 tokens + CLIP pooled vector.'},
        'TOKENIZER': {'value': None, 'registry': 'TOKENIZERS', 'description': 'Unused: the embedders tokenize.'},
        'SCALE_FACTOR': {'value': None, 'type': float, 'description': "Latent scale (default: the VAE's)."},
        'SHIFT_FACTOR': {'value': None, 'type': float, 'description': "Latent shift (default: the VAE's)."},
        'TRAIN_GUIDANCE': {'value': 1.0, 'description': 'Guidance value the network sees in training (FLUX-dev; '
                                                        'diffusers\' script uses 1.0 for LoRA, 3.5 by default).'},
        'TRUE_CFG_SCALE': {'value': 1.0, 'description': 'Classifier-free guidance over the negative prompt '
                                                        'on top of the embedded guidance (1: off).'},
        'EVAL_EMA': {'value': False, 'description': "Accepted for Scepter's recipes (USE_EMA decides)."},
        'IMAGE_SIZE': {'value': [1024, 1024], 'description': 'Default [height, width] for sampling.'},
    }

    def __init__(self, cfg: Config | dict, logger: logging.Logger | None = None):
        super().__init__(cfg, logger=logger)
        vae = self.first_stage_model.cfg
        scale = self.cfg.SCALE_FACTOR if self.cfg.SCALE_FACTOR is not None else vae.get('SCALE_FACTOR', 1.0)
        self.scale_factor.fill_(float(scale))
        shift = self.cfg.SHIFT_FACTOR if self.cfg.SHIFT_FACTOR is not None else vae.get('SHIFT_FACTOR', 0.0)
        self.shift_factor = float(shift)

    def diffusion_config(self) -> Config:
        diffusion = Config(self.cfg.DIFFUSION.to_dict())
        diffusion['TIMESTEPS'] = self.cfg.TIMESTEPS
        return diffusion

    @property
    def latent_channels(self) -> int:
        return self.first_stage_model.cfg.EMBED_DIM

    @property
    def embeds_guidance(self) -> bool:
        return bool(self.model.cfg.get('GUIDANCE_EMBED'))

    def load_pretrained_model(self, path: str, use_ema: bool = False) -> LoadReport:
        """Transformer and VAE weights from a diffusers FLUX folder or a BFL single file (the
        text encoders load their own folders)."""
        from ...convert.flux_folder import read_flux_weights
        from ...fs import FS
        sd = read_flux_weights(FS.get_from(path), self.first_stage_model.cfg.to_dict())
        release_replaced(self, sd, self.cfg.IGNORE_KEYS)
        return load_into(self, sd, ignore_keys=self.cfg.IGNORE_KEYS, logger=self.logger, source=str(path),
                         assign=True)

    def encode_prompts(self, prompts: list[str], guidance: float | None = None) -> dict[str, torch.Tensor]:
        cond = dict(super().encode_prompts(prompts))
        if self.embeds_guidance:
            value = self.cfg.TRAIN_GUIDANCE if guidance is None else guidance
            cond['guidance'] = torch.full((len(prompts),), float(value), device=cond['y'].device)
        return cond

    def guidance_inputs(self, prompt: list[str], n_prompt: list[str],
                        guide_scale: float | None) -> tuple[list[dict] | dict, float | None]:
        """FLUX-dev: guide_scale goes into the network; with TRUE_CFG_SCALE > 1 the negative
        prompt runs as well and the two predictions mix by TRUE_CFG_SCALE."""
        cond = {'cond': self.encode_prompts(prompt, guide_scale)}
        if self.cfg.TRUE_CFG_SCALE > 1:
            return [cond, {'cond': self.encode_prompts(n_prompt, guide_scale)}], float(self.cfg.TRUE_CFG_SCALE)
        return cond, None

    def forward_test(self, *args: Any, sampler: str = 'flow_euler', guide_rescale: float | None = None,
                     **kwargs: Any) -> list[dict[str, Any]]:
        return super().forward_test(*args, sampler=sampler, guide_rescale=guide_rescale, **kwargs)

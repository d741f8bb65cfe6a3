"""Rectified-flow transformers as LatentDiffusion networks: FLUX.1 (dev, schnell) and SD3 /
SD3.5. Both are the same LatentDiffusion with the flow objective (FlowMatchDiffusion) over a
16-channel VAE's latents; what differs is the backbone, the text conditions and guidance.

FLUX-dev's guidance is distilled: the scale is an input of the network (`cond['guidance']`,
diffusers' `guidance_scale`), not two passes; true classifier-free guidance on top is
optional (TRUE_CFG_SCALE > 1, diffusers' `true_cfg_scale`). SD3 uses ordinary CFG."""
from __future__ import annotations

import logging
from typing import Any

import torch

from ...checkpoint import LoadReport, load_into
from ...config import Config
from ...registry import MODELS
from .latent_diffusion import LatentDiffusion, release_replaced


class LatentDiffusionFlow(LatentDiffusion):
    """What the flow networks share: the flow objective's diffusion block, unpacked latent
    noise, weights read by `read_weights`, and flow sampling defaults."""

    para_dict = {
        'PARAMETERIZATION': {'value': 'rf', 'choices': ('rf',), 'description': 'Rectified flow (the velocity).'},
        'TOKENIZER': {'value': None, 'registry': 'TOKENIZERS', 'description': 'Unused: the embedders tokenize.'},
        'EVAL_EMA': {'value': False, 'description': "Accepted for Scepter's recipes (USE_EMA decides)."},
        'IMAGE_SIZE': {'value': [1024, 1024], 'description': 'Default [height, width] for sampling.'},
    }

    def diffusion_config(self) -> Config:
        diffusion = Config(self.cfg.DIFFUSION.to_dict())
        diffusion['TIMESTEPS'] = self.cfg.TIMESTEPS
        return diffusion

    @property
    def latent_channels(self) -> int:
        return self.first_stage_model.cfg.EMBED_DIM

    def read_weights(self, path: str) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def load_pretrained_model(self, path: str, use_ema: bool = False) -> LoadReport:
        """Backbone and VAE weights (the text encoders load their own folders)."""
        from ...fs import FS
        sd = self.read_weights(str(FS.get_from(path)))
        release_replaced(self, sd, self.cfg.IGNORE_KEYS)
        return load_into(self, sd, ignore_keys=self.cfg.IGNORE_KEYS, logger=self.logger, source=str(path),
                         assign=True)

    def forward_test(self, *args: Any, sampler: str = 'flow_euler', guide_rescale: float | None = None,
                     **kwargs: Any) -> list[dict[str, Any]]:
        return super().forward_test(*args, sampler=sampler, guide_rescale=guide_rescale, **kwargs)


@MODELS.register_class()
class LatentDiffusionFlux(LatentDiffusionFlow):
    """Text-to-image FLUX: Scepter's `LatentDiffusionFlux` keys."""

    para_dict = {
        'DIFFUSION': {'value': {'NAME': 'FlowMatchDiffusion',
                                'SAMPLER_SCHEDULER': {'NAME': 'FlowMatchFluxShiftScheduler'}},
                      'registry': 'DIFFUSIONS', 'description': 'The flow (DiffusionFluxRF / FlowMatchDiffusion).'},
        'DIFFUSION_MODEL': {'value': {'NAME': 'Flux'}, 'registry': 'BACKBONES', 'description': 'The transformer.'},
        'FIRST_STAGE_MODEL': {'value': {'NAME': 'AutoencoderKLFlux'}, 'registry': 'MODELS',
                              'description': 'The 16-channel VAE (its SCALE_FACTOR / SHIFT_FACTOR apply).'},
        'COND_STAGE_MODEL': {'value': {'NAME': 'T5PlusClipFluxEmbedder'}, 'registry': 'EMBEDDERS',
                             'description': 'T5 tokens + CLIP pooled vector.'},
        'SCALE_FACTOR': {'value': None, 'type': float, 'description': "Latent scale (default: the VAE's)."},
        'SHIFT_FACTOR': {'value': None, 'type': float, 'description': "Latent shift (default: the VAE's)."},
        'TRAIN_GUIDANCE': {'value': 1.0, 'description': 'Guidance value the network sees in training (FLUX-dev; '
                                                        'diffusers\' script uses 1.0 for LoRA, 3.5 by default).'},
        'TRUE_CFG_SCALE': {'value': 1.0, 'description': 'Classifier-free guidance over the negative prompt '
                                                        'on top of the embedded guidance (1: off).'},
    }

    def __init__(self, cfg: Config | dict, logger: logging.Logger | None = None):
        super().__init__(cfg, logger=logger)
        vae = self.first_stage_model.cfg
        scale = self.cfg.SCALE_FACTOR if self.cfg.SCALE_FACTOR is not None else vae.get('SCALE_FACTOR', 1.0)
        self.scale_factor.fill_(float(scale))
        shift = self.cfg.SHIFT_FACTOR if self.cfg.SHIFT_FACTOR is not None else vae.get('SHIFT_FACTOR', 0.0)
        self.shift_factor = float(shift)

    @property
    def embeds_guidance(self) -> bool:
        return bool(self.model.cfg.get('GUIDANCE_EMBED'))

    def read_weights(self, path: str) -> dict[str, torch.Tensor]:
        """From a diffusers FLUX folder or a BFL single file."""
        from ...convert.flux_folder import read_flux_weights
        return read_flux_weights(path, self.first_stage_model.cfg.to_dict())

    def encode_prompts(self, prompts: list[str], guidance: float | None = None) -> dict[str, torch.Tensor]:
        cond = dict(super().encode_prompts(prompts))
        if self.embeds_guidance:
            value = self.cfg.TRAIN_GUIDANCE if guidance is None else guidance
            cond['guidance'] = torch.full((len(prompts),), float(value), device=cond['y'].device)
        return cond

    def guidance_inputs(self, prompt: list[str], n_prompt: list[str], inputs: dict[str, Any],
                        size: tuple[int, int], guide_scale: float | None) -> tuple[list[dict] | dict, float | None]:
        """FLUX-dev: guide_scale goes into the network; with TRUE_CFG_SCALE > 1 the negative
        prompt runs as well and the two predictions mix by TRUE_CFG_SCALE."""
        cond = self.model_inputs(self.encode_prompts(prompt, guide_scale))
        if self.cfg.TRUE_CFG_SCALE > 1:
            uncond = self.model_inputs(self.encode_prompts(n_prompt, guide_scale))
            return [cond, uncond], float(self.cfg.TRUE_CFG_SCALE)
        return cond, None


@MODELS.register_class()
class LatentDiffusionSD3(LatentDiffusionFlow):
    """Text-to-image SD3 / SD3.5: Scepter's `LatentDiffusionSD3` keys. SCHEDULE_ARGS' SHIFT
    shifts both the training levels (drawn by T_WEIGHT) and the sampling grid."""

    para_dict = {
        'SCHEDULE_ARGS': {'value': {'NAME': 'shifted', 'SHIFT': 3.0},
                          'description': 'The flow shift of training and sampling (SD3: 3.0).'},
        'T_WEIGHT': {'value': 'uniform', 'choices': ('uniform', 'logit_normal', 'mode'),
                     'description': 'Density of the training noise levels.'},
        'DIFFUSION': {'value': {'NAME': 'FlowMatchDiffusion'}, 'registry': 'DIFFUSIONS',
                      'description': 'The flow; its schedulers come from SCHEDULE_ARGS and T_WEIGHT.'},
        'DIFFUSION_MODEL': {'value': {'NAME': 'MMDiT'}, 'registry': 'BACKBONES', 'description': 'The transformer.'},
        'FIRST_STAGE_MODEL': {'value': {'NAME': 'AutoencoderKL', 'EMBED_DIM': 16, 'USE_CONV': False},
                              'registry': 'MODELS', 'description': 'The 16-channel VAE.'},
        'COND_STAGE_MODEL': {'value': {'NAME': 'SD3TextEmbedder'}, 'registry': 'EMBEDDERS',
                             'description': 'CLIP-L + CLIP-bigG + T5.'},
        'SCALE_FACTOR': {'value': 1.5305, 'type': float, 'description': 'Latent scale.'},
        'SHIFT_FACTOR': {'value': 0.0609, 'type': float, 'description': 'Latent shift.'},
    }

    def diffusion_config(self) -> Config:
        diffusion = super().diffusion_config()
        shift = float(self.cfg.SCHEDULE_ARGS.get('SHIFT', 3.0))
        diffusion['NOISE_SCHEDULER'] = {'NAME': 'FlowMatchSigmaScheduler', 'WEIGHTING_SCHEME': self.cfg.T_WEIGHT,
                                        'SHIFT': shift}
        diffusion['SAMPLER_SCHEDULER'] = {'NAME': 'FlowMatchShiftScheduler', 'SHIFT': shift}
        return diffusion

    def read_weights(self, path: str) -> dict[str, torch.Tensor]:
        """From a diffusers SD3 folder or Stability's single file."""
        from ...convert.sd3_folder import read_sd3_weights
        return read_sd3_weights(path, self.first_stage_model.cfg.to_dict())

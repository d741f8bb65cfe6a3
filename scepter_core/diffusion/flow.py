"""FlowMatchDiffusion (DIFFUSIONS, Scepter's `DiffusionFluxRF`): rectified flow,
`x_t = (1 - s) x0 + s eps` for s in [0, 1], as FLUX and SD3 train and sample it.

It is the same diffusion core with another forward process: the 'flow' parameterization
(target eps - x0, see parameterization.py), the shared loss pieces, guidance and the
sampler protocol (its sampler variable is x_t itself and sigma is s). The model is called
as `model(x_t, t, **model_kwargs)` with t = s * TIMESTEPS (float), as diffusers' SD3 and
FLUX transformers take it (FLUX's scales it back to s inside)."""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch

from ..base import BaseObject
from ..config import Config
from ..errors import ConfigError
from ..registry import DIFFUSIONS, NOISE_SCHEDULES
from .guidance import guided_model
from .losses import LOSS_TYPES, elementwise_loss
from .parameterization import convert
from .sampling import SamplingMixin

WEIGHTINGS = ('none', 'sigma_sqrt', 'cosmap')
# Scepter names the raw network output 'raw'; for a flow model that is the velocity.
PREDICTION_ALIASES = {'raw': 'flow', 'flow': 'flow', 'v': 'flow'}


def loss_weight(sigmas: torch.Tensor, scheme: str) -> torch.Tensor:
    """Per-sample loss weights of SD3 (Esser et al. 2024): sigma^-2 or the cosmap density."""
    if scheme == 'sigma_sqrt':
        return sigmas.float() ** -2.0
    if scheme == 'cosmap':
        return 2 / (math.pi * (1 - 2 * sigmas + 2 * sigmas ** 2))
    if scheme == 'none':
        return torch.ones_like(sigmas)
    raise ConfigError(f"LOSS_WEIGHTING: '{scheme}' is not one of {', '.join(WEIGHTINGS)}")


class FlowDenoiser:
    """`D(x_t, s) -> x0` over `model_fn(x_t, t)` predicting the flow velocity eps - x0."""

    def __init__(self, model_fn: Callable, num_timesteps: int):
        self.model_fn, self.num_timesteps = model_fn, num_timesteps

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        sigma = torch.as_tensor(sigma).detach().to('cpu', torch.float64)
        if sigma.ndim == 0:
            s = float(sigma)
            t = torch.full((x.shape[0],), s * self.num_timesteps, device=x.device, dtype=torch.float32)
        else:
            s = sigma.to(x.device, x.dtype).view((-1,) + (1,) * (x.ndim - 1))
            t = (sigma * self.num_timesteps).to(x.device, torch.float32).expand(x.shape[0])
        out = self.model_fn(x, t).to(x.dtype)
        return convert(out, 'flow', 'x0', x, 1 - s, s)


@DIFFUSIONS.register_class(aliases=('DiffusionFluxRF',))
class FlowMatchDiffusion(SamplingMixin, BaseObject):
    """Rectified-flow training and sampling over a training and a sampling noise scheduler."""

    SPACE = 'flow'
    para_dict = {
        'TIMESTEPS': {'value': 1000, 'description': 'Scale of the timestep the model sees: t = s * TIMESTEPS.'},
        'PREDICTION_TYPE': {'value': 'flow', 'choices': tuple(PREDICTION_ALIASES),
                            'description': "What the network predicts: flow = eps - x0 ('raw' in Scepter's recipes)."},
        'NOISE_SCHEDULER': {'value': {'NAME': 'FlowMatchSigmaScheduler'}, 'registry': 'NOISE_SCHEDULES',
                            'description': 'Training noise levels (a NOISE_SCHEDULES block: FlowMatchSigmaScheduler).'},
        'SAMPLER_SCHEDULER': {'value': {'NAME': 'FlowMatchShiftScheduler'}, 'registry': 'NOISE_SCHEDULES',
                              'description': 'Sampling grid (FlowMatchShiftScheduler for SD3, '
                                             'FlowMatchFluxShiftScheduler for FLUX).'},
        'LOSS_TYPE': {'value': 'l2', 'choices': LOSS_TYPES, 'description': 'Elementwise training loss.'},
        'HUBER_DELTA': {'value': 1.0, 'description': 'Delta of the huber loss.'},
        'LOSS_WEIGHTING': {'value': 'none', 'choices': WEIGHTINGS,
                           'description': 'Per-sample loss weights: none, sigma_sqrt or cosmap (SD3 paper).'},
        'PATCH_SIZE': {'value': 2, 'description': 'Latent pixels per image token side (FLUX packs 2x2): '
                                                  'the token count that sets FLUX\'s sampling shift.'},
    }

    def __init__(self, cfg: Config | dict | None = None, logger: Any = None):
        super().__init__(cfg, logger)
        if self.cfg.TIMESTEPS < 1:
            raise ConfigError(f"'{self.cfg.path or 'DIFFUSION'}.TIMESTEPS': need at least 1, got {self.cfg.TIMESTEPS}")
        self.train_sigmas = NOISE_SCHEDULES.build(self.cfg.NOISE_SCHEDULER, logger=self.logger)
        self.sample_schedule = NOISE_SCHEDULES.build(self.cfg.SAMPLER_SCHEDULER, logger=self.logger)

    @property
    def num_timesteps(self) -> int:
        return int(self.cfg.TIMESTEPS)

    @property
    def prediction_type(self) -> str:
        return PREDICTION_ALIASES[self.cfg.PREDICTION_TYPE]

    # ---- the forward process -------------------------------------------------------
    def t_to_sigma(self, t: torch.Tensor | float) -> torch.Tensor:
        return torch.as_tensor(t, dtype=torch.float64) / self.num_timesteps

    def sigma_to_t(self, sigma: torch.Tensor | float) -> torch.Tensor:
        return torch.as_tensor(sigma, dtype=torch.float64) * self.num_timesteps

    def sample_t(self, batch: int, device: torch.device | str = 'cpu',
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Training timesteps t = s * T (float32 [batch]) drawn by NOISE_SCHEDULER."""
        sigmas = self.train_sigmas.sample(batch, self.num_timesteps, generator)
        return (sigmas * self.num_timesteps).to(device)

    def _sigmas(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return (t.to(like.device).float() / self.num_timesteps).view((-1,) + (1,) * (like.ndim - 1)).to(like.dtype)

    def diffuse(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        noise = torch.randn_like(x0) if noise is None else noise
        s = self._sigmas(t, x0)
        return (1 - s) * x0 + s * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return noise - x0

    # ---- training ------------------------------------------------------------------
    def loss(self, x0: torch.Tensor, t: torch.Tensor | None, model: Callable, model_kwargs: dict | None = None,
             noise: torch.Tensor | None = None, weight: torch.Tensor | None = None, reduction: str = 'none',
             loss_fn: Callable | None = None) -> torch.Tensor:
        """Per-sample loss [B] (or its mean): LOSS_WEIGHTING(s) * mean((model(x_t, t) - (eps - x0))^2).
        t None draws it from NOISE_SCHEDULER."""
        if reduction not in ('none', 'mean'):
            raise ConfigError(f"reduction: '{reduction}' is not one of 'none', 'mean'")
        noise = torch.randn_like(x0) if noise is None else noise
        t = self.sample_t(x0.shape[0], x0.device) if t is None else t
        out = model(self.diffuse(x0, t, noise), t, **(model_kwargs or {}))
        target = self.target(x0, noise, t)
        elementwise = loss_fn(out, target) if loss_fn else elementwise_loss(out, target, self.cfg.LOSS_TYPE,
                                                                           self.cfg.HUBER_DELTA)
        per_sample = elementwise.float().reshape(x0.shape[0], -1).mean(dim=1)
        per_sample = per_sample * loss_weight(t.to(per_sample.device).float() / self.num_timesteps,
                                              self.cfg.LOSS_WEIGHTING)
        if weight is not None:
            per_sample = per_sample * torch.as_tensor(weight, device=per_sample.device, dtype=per_sample.dtype)
        return per_sample.mean() if reduction == 'mean' else per_sample

    # ---- sampling ------------------------------------------------------------------
    def denoiser(self, model: Callable, model_kwargs: dict | list | None = None, guide_scale: float | None = None,
                 guide_rescale: float | None = None) -> FlowDenoiser:
        """`D(x_t, s) -> x0`, with true classifier-free guidance when model_kwargs = [cond, uncond]."""
        return FlowDenoiser(guided_model(model, model_kwargs, guide_scale, guide_rescale), self.num_timesteps)

    def image_tokens(self, shape: torch.Size) -> int:
        """Tokens of a latent [B, C, H, W] after PATCH_SIZE x PATCH_SIZE packing."""
        if len(shape) < 4:
            return 4096
        return (int(shape[-2]) // self.cfg.PATCH_SIZE) * (int(shape[-1]) // self.cfg.PATCH_SIZE)

    def sampler_sigmas(self, steps: int | Sequence[float], discretization: str | None, t_max: float | None,
                       t_min: float | None, discard_penultimate_step: bool, integer: bool,
                       shape: torch.Size) -> tuple[None, torch.Tensor]:
        """SAMPLER_SCHEDULER's grid (a list of levels s is used as given); discretization,
        t_max and t_min belong to discrete-time models and do not apply."""
        if not isinstance(steps, int):
            grid = torch.as_tensor(steps, dtype=torch.float64).flatten()
            return None, torch.cat([grid, grid.new_zeros(1)]) if grid[-1] != 0 else grid
        return None, self.sample_schedule.sigmas(steps, self.num_timesteps, self.image_tokens(shape))

    def start_state(self, noise: torch.Tensor, sigma: float) -> torch.Tensor:
        return noise  # the reference pipelines start from x = noise at the first level (1 for FLUX and SD3)

    def noised_state(self, x0: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
        return (1 - sigma) * x0.to(noise.dtype) + sigma * noise

    def model_input(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        return x

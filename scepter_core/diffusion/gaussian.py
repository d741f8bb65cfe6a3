"""GaussianDiffusion (DIFFUSIONS): the variance-preserving forward process, its training
loss and sampling.

Shapes: x0, noise, xt are [B, ...]; t is [B] (long for training; the sampler passes
float timesteps, possibly fractional, to the model). The model is called as
`model(xt, t, **model_kwargs)` and predicts eps, v or x0 (PREDICTION_TYPE)."""
from __future__ import annotations

from typing import Any, Callable

import torch

from ..base import BaseObject
from ..config import Config
from ..errors import ConfigError
from ..registry import DIFFUSIONS, NOISE_SCHEDULES
from .denoiser import Denoiser, log_sigmas_of, sigma_to_t, t_to_sigma
from .flow_schedules import shift_sigmas
from .guidance import guided_model
from .losses import LOSS_TYPES, elementwise_loss, min_snr_weight
from .parameterization import VP_PREDICTION_TYPES, convert, velocity
from .sampling import SamplingMixin
from .schedules import alphas_cumprod_to_betas, rescale_zero_terminal_snr

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _one_of(**given: torch.Tensor | None) -> tuple[str, torch.Tensor]:
    present = [(k, v) for k, v in given.items() if v is not None]
    if len(present) != 1:
        raise ValueError(f"pass exactly one of {', '.join(given)} (got {len(present)})")
    return present[0]


@DIFFUSIONS.register_class()
class GaussianDiffusion(SamplingMixin, BaseObject):
    """DDPM-style diffusion over a NOISE_SCHEDULES schedule of TIMESTEPS steps."""

    para_dict = {
        'SCHEDULE': {'value': {'NAME': 'scaled_linear', 'BETA_MIN': 0.00085, 'BETA_MAX': 0.012}, 'type': dict,
                     'description': 'A NOISE_SCHEDULES block (linear, scaled_linear, cosine, logsnr_cosine_interp).'},
        'TIMESTEPS': {'value': 1000, 'description': 'Number of training timesteps T (t = 0 .. T-1).'},
        'PREDICTION_TYPE': {'value': 'eps', 'choices': VP_PREDICTION_TYPES,
                            'description': 'What the network predicts: eps (noise), v (velocity) or x0.'},
        'ZERO_TERMINAL_SNR': {'value': False, 'description': 'Rescale the schedule so the last step is pure '
                                                             'noise (Lin et al. 2023); pair it with v prediction.'},
        'LOSS_TYPE': {'value': 'l2', 'choices': LOSS_TYPES, 'description': 'Elementwise training loss.'},
        'HUBER_DELTA': {'value': 1.0, 'description': 'Delta of the huber loss.'},
        'MIN_SNR_GAMMA': {'value': None, 'type': (int, float),
                          'description': 'Min-SNR-gamma loss weighting (Hang et al. 2023); null disables it.'},
        'NOISE_OFFSET': {'value': 0.0, 'description': 'Std of a per-channel constant added to the training '
                                                      'noise (offset noise).'},
        'INPUT_PERTURBATION': {'value': 0.0, 'description': 'Std of extra noise added to the network input '
                                                            'only (Ning et al. 2023); the target keeps the '
                                                            'original noise.'},
        'TIMESTEP_SHIFT': {'value': 1.0, 'description': 'Training timesteps t = floor(T * shift(u)), u uniform, '
                                                        "with SD3's shift s u / (1 + (s - 1) u): above 1 more "
                                                        'steps at high noise, where layout and colour are '
                                                        'decided; 1 is uniform.'},
    }

    def __init__(self, cfg: Config | dict | None = None, logger: Any = None):
        super().__init__(cfg, logger)
        if self.cfg.TIMESTEPS < 2:
            raise ConfigError(f"'{self.cfg.path or 'DIFFUSION'}.TIMESTEPS': need at least 2, got {self.cfg.TIMESTEPS}")
        if not self.cfg.TIMESTEP_SHIFT > 0:
            raise ConfigError(f"'{self.cfg.path or 'DIFFUSION'}.TIMESTEP_SHIFT': expected a positive number, "
                              f"got {self.cfg.TIMESTEP_SHIFT}")
        schedule = NOISE_SCHEDULES.build(self.cfg.SCHEDULE, logger=self.logger)
        abar = schedule.alphas_cumprod(self.cfg.TIMESTEPS).double()
        if self.cfg.ZERO_TERMINAL_SNR:
            abar = rescale_zero_terminal_snr(abar)
        self.alphas_cumprod: torch.Tensor = abar  # float64, CPU
        self.betas: torch.Tensor = alphas_cumprod_to_betas(abar)
        self.log_sigmas: torch.Tensor = log_sigmas_of(abar)
        self._tables: dict[torch.device, dict[str, torch.Tensor]] = {}

    @property
    def num_timesteps(self) -> int:
        return int(self.cfg.TIMESTEPS)

    @property
    def prediction_type(self) -> str:
        return self.cfg.PREDICTION_TYPE

    # ---- coefficients --------------------------------------------------------------
    def _table(self, device: torch.device) -> dict[str, torch.Tensor]:
        """float32 copies of the per-timestep coefficients on `device`, made once."""
        if device not in self._tables:
            a = self.alphas_cumprod
            tables = {'alpha': a.sqrt(), 'sigma': (1 - a).sqrt(), 'snr': a / (1 - a)}
            self._tables[device] = {k: v.float().to(device) for k, v in tables.items()}
        return self._tables[device]

    def _coefs(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha_t, sigma_t) = (sqrt(a_t), sqrt(1 - a_t)) shaped to broadcast over `like`."""
        table = self._table(like.device)
        idx = t.to(like.device).long()
        shape = (-1,) + (1,) * (like.ndim - 1)
        return table['alpha'][idx].view(shape).to(like.dtype), table['sigma'][idx].view(shape).to(like.dtype)

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        """Signal-to-noise ratio a_t / (1 - a_t) at integer timesteps, float32 [B]."""
        return self._table(t.device)['snr'][t.long()]

    def t_to_sigma(self, t: torch.Tensor | float) -> torch.Tensor:
        """k-diffusion sigma = sqrt((1 - a_t) / a_t) at (fractional) timesteps, float64."""
        return t_to_sigma(torch.as_tensor(t).cpu(), self.log_sigmas)

    def sigma_to_t(self, sigma: torch.Tensor | float) -> torch.Tensor:
        return sigma_to_t(torch.as_tensor(sigma).cpu(), self.log_sigmas)

    def sample_t(self, batch: int, device: torch.device | str = 'cpu') -> torch.Tensor:
        """Training timesteps over 0 .. T-1 (long [batch]): uniform, or shifted (TIMESTEP_SHIFT)."""
        shift = float(self.cfg.TIMESTEP_SHIFT)
        if shift == 1.0:  # the uniform draw as before, so that unshifted runs keep their random stream
            return torch.randint(0, self.num_timesteps, (batch,), device=device).long()
        u = shift_sigmas(torch.rand(batch, device=device, dtype=torch.float64), shift)
        return (u * self.num_timesteps).long().clamp_(max=self.num_timesteps - 1)

    # ---- the forward process and conversions ------------------------------------------
    def diffuse(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Sample q(x_t | x_0) = N(sqrt(a_t) x0, (1 - a_t) I)."""
        noise = torch.randn_like(x0) if noise is None else noise
        alpha, sigma = self._coefs(t, x0)
        return alpha * x0 + sigma * noise

    def _convert(self, to: str, xt: torch.Tensor, t: torch.Tensor, **given: torch.Tensor | None) -> torch.Tensor:
        kind, out = _one_of(**given)
        return convert(out, kind, to, xt, *self._coefs(t, xt))

    def predict_x0(self, xt: torch.Tensor, t: torch.Tensor, *, eps: torch.Tensor | None = None,
                   v: torch.Tensor | None = None) -> torch.Tensor:
        """x0 from x_t and a predicted eps or v."""
        return self._convert('x0', xt, t, eps=eps, v=v)

    def predict_eps(self, xt: torch.Tensor, t: torch.Tensor, *, x0: torch.Tensor | None = None,
                    v: torch.Tensor | None = None) -> torch.Tensor:
        """eps from x_t and a predicted x0 or v."""
        return self._convert('eps', xt, t, x0=x0, v=v)

    def predict_v(self, xt: torch.Tensor, t: torch.Tensor, *, x0: torch.Tensor | None = None,
                  eps: torch.Tensor | None = None) -> torch.Tensor:
        """v from x_t and a predicted x0 or eps."""
        return self._convert('v', xt, t, x0=x0, eps=eps)

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the network should output for the pair (x0, noise) at t."""
        if self.prediction_type == 'eps':
            return noise
        if self.prediction_type == 'x0':
            return x0
        return velocity(x0, noise, *self._coefs(t, x0))

    # ---- training ------------------------------------------------------------------
    def loss(self, x0: torch.Tensor, t: torch.Tensor, model: Callable, model_kwargs: dict | None = None,
             noise: torch.Tensor | None = None, weight: torch.Tensor | None = None, reduction: str = 'none',
             loss_fn: LossFn | None = None) -> torch.Tensor:
        """Per-sample loss [B] (reduction='none') or its batch mean (reduction='mean').

        `noise` defaults to N(0, I); NOISE_OFFSET and INPUT_PERTURBATION add fresh random
        terms to it. `loss_fn(pred, target)` (elementwise) replaces LOSS_TYPE. Min-SNR
        weights, then `weight` [B], scale each sample's mean loss."""
        if reduction not in ('none', 'mean'):
            raise ConfigError(f"reduction: '{reduction}' is not one of 'none', 'mean'")
        noise = torch.randn_like(x0) if noise is None else noise
        if self.cfg.NOISE_OFFSET:
            offset_shape = x0.shape[:2] + (1,) * (x0.ndim - 2)
            noise = noise + self.cfg.NOISE_OFFSET * torch.randn(offset_shape, device=x0.device, dtype=noise.dtype)
        model_noise = noise
        if self.cfg.INPUT_PERTURBATION:
            model_noise = noise + self.cfg.INPUT_PERTURBATION * torch.randn_like(noise)
        xt = self.diffuse(x0, t, model_noise)
        out = model(xt, t, **(model_kwargs or {}))
        target = self.target(x0, noise, t)
        if loss_fn is not None:
            elementwise = loss_fn(out, target)
        else:
            elementwise = elementwise_loss(out, target, self.cfg.LOSS_TYPE, self.cfg.HUBER_DELTA)
        per_sample = elementwise.float().reshape(x0.shape[0], -1).mean(dim=1)
        if self.cfg.MIN_SNR_GAMMA is not None:
            per_sample = per_sample * min_snr_weight(self.snr(t.to(x0.device)), self.cfg.MIN_SNR_GAMMA,
                                                     self.prediction_type)
        if weight is not None:
            per_sample = per_sample * torch.as_tensor(weight, device=per_sample.device, dtype=per_sample.dtype)
        return per_sample.mean() if reduction == 'mean' else per_sample

    # ---- sampling ------------------------------------------------------------------
    def denoiser(self, model: Callable, model_kwargs: dict | list | None = None, guide_scale: float | None = None,
                 guide_rescale: float | None = None) -> Denoiser:
        """`D(x, sigma) -> x0` over `model`, with classifier-free guidance when
        `model_kwargs=[cond, uncond]` and guide_scale is not None/1."""
        return Denoiser(guided_model(model, model_kwargs, guide_scale, guide_rescale), self.log_sigmas,
                        self.prediction_type)

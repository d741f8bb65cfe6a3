"""Built-in diffusion: noise schedules, GaussianDiffusion, samplers and guidance.
Importing this package registers them (NOISE_SCHEDULES, DIFFUSIONS, DIFFUSION_SAMPLERS)."""
from . import flow_schedules, samplers, samplers_dpmpp, schedules  # noqa: F401  (registration)
from .denoiser import Denoiser
from .flow import FlowMatchDiffusion
from .gaussian import GaussianDiffusion
from .guidance import concat_kwargs, constrain_x0, guided_model, rescale_guidance, threshold_x0
from .losses import elementwise_loss, min_snr_weight
from .samplers import register_sampler, with_karras_sigmas
from .schedules import NoiseSchedule, rescale_zero_terminal_snr
from .timesteps import discretize, karras_sigmas

__all__ = ['Denoiser', 'FlowMatchDiffusion', 'GaussianDiffusion', 'NoiseSchedule', 'concat_kwargs', 'constrain_x0', 'discretize',
           'elementwise_loss', 'guided_model', 'karras_sigmas', 'min_snr_weight', 'register_sampler',
           'rescale_guidance', 'rescale_zero_terminal_snr', 'threshold_x0', 'with_karras_sigmas']

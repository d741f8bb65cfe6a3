"""`sample()`: builds the sigma grid once, wraps the model into a guided, constrained
denoiser, and runs a registered sampler function over it (mixed into GaussianDiffusion)."""
from __future__ import annotations

import contextlib
import inspect
import math
from typing import Any, Callable, Sequence

import torch

from ..errors import ConfigError
from ..registry import DIFFUSION_SAMPLERS
from ..env import we
from ..utils.progress import progress_bar
from .cuda_graph import maybe_graphed
from .guidance import constrain_x0
from .timesteps import PREV_TIMESTEPS, discretize, split_at, strength_start, strided_targets

_PROTOCOL_ARGS = ('denoise', 'x', 'sigmas')


def resolve_sampler(solver: str | Callable) -> Callable:
    """A DIFFUSION_SAMPLERS name (close matches are suggested) or a sampler function."""
    return solver if callable(solver) else DIFFUSION_SAMPLERS.get(solver)


def _accepted(fn: Callable, kwargs: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Split kwargs into those `fn` takes and those it does not."""
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return kwargs, []
    taken = {k: v for k, v in kwargs.items() if k in params and k not in _PROTOCOL_ARGS}
    return taken, sorted(set(kwargs) - set(taken))


def _generator(seed: int | None, device: torch.device) -> torch.Generator:
    gen = torch.Generator(device=device)
    if seed is None or seed < 0:
        gen.seed()
    else:
        gen.manual_seed(int(seed))
    return gen


class SamplingMixin:
    """Needs `num_timesteps`, `t_to_sigma(t)`, `denoiser(...)` and `logger` from its host.

    The sampler variable is k-diffusion's `x = x_t / alpha_t` (SPACE 'vp'); a host with
    another forward process overrides `SPACE`, `sampler_sigmas`, `start_state`,
    `noised_state` and `model_input` (see flow.py)."""

    SPACE = 'vp'

    def sampler_sigmas(self, steps: int | Sequence[float], discretization: str | None, t_max: float | None,
                       t_min: float | None, discard_penultimate_step: bool, integer: bool,
                       shape: torch.Size) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(visited timesteps, their sigmas then 0) for a sample of `shape`."""
        ts = self.timestep_grid(steps, discretization, t_max, t_min, discard_penultimate_step, integer)
        return ts, torch.cat([self.t_to_sigma(ts), torch.zeros(1, dtype=torch.float64)])

    def start_state(self, noise: torch.Tensor, sigma: float) -> torch.Tensor:
        """The sampler's x at sigma for unit noise (pure noise: x_t = noise at alpha ~ 0)."""
        return noise * math.sqrt(1.0 + sigma ** 2)

    def noised_state(self, x0: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
        """img2img: a clean sample noised to sigma, in the sampler's variable."""
        return x0.to(noise.dtype) + noise * sigma

    def model_input(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """The model's x_t for the sampler's x at sigma."""
        return x / math.sqrt(1.0 + sigma ** 2)

    def sampler_state(self, xt: torch.Tensor, sigma: float) -> torch.Tensor:
        """The sampler's x for the model's x_t at sigma (the inverse of `model_input`)."""
        return xt * math.sqrt(1.0 + sigma ** 2)

    def timestep_grid(self, steps: int | Sequence[float], discretization: str | None = None,
                      t_max: float | None = None, t_min: float | None = None,
                      discard_penultimate_step: bool = False, integer: bool = False) -> torch.Tensor:
        """The visited timesteps, descending (CPU float64). With `discard_penultimate_step`
        one extra is discretized and the last dropped, so the grid jumps from the one before
        it to the clean end and the step count stays `steps`. A list is used as is."""
        if not isinstance(steps, int):
            return torch.as_tensor(steps, dtype=torch.float64).flatten()
        ts = discretize(discretization, steps + int(discard_penultimate_step), self.num_timesteps,
                        t_max, t_min, integer)
        return ts[:-1] if discard_penultimate_step and len(ts) > 1 else ts

    def sigma_grid(self, steps: int | Sequence[float], discretization: str | None = None,
                   t_max: float | None = None, t_min: float | None = None,
                   discard_penultimate_step: bool = False, integer: bool = False) -> torch.Tensor:
        """Descending k-diffusion sigmas at the visited timesteps (`timestep_grid`), then 0
        (CPU float64)."""
        ts = self.timestep_grid(steps, discretization, t_max, t_min, discard_penultimate_step, integer)
        return torch.cat([self.t_to_sigma(ts), torch.zeros(1, dtype=torch.float64)])

    def strided_sigmas(self, ts: torch.Tensor) -> torch.Tensor:
        """The sigma each step lands on with prev_timestep 'strided' (`strided_targets`), 0 past t = 0."""
        targets = strided_targets(ts, self.num_timesteps)
        return torch.where(targets >= 0, self.t_to_sigma(targets.clamp(min=0)), 0.0)

    def sample(self, noise: torch.Tensor | None, model: Callable, model_kwargs: dict | list | None = None,
               solver: str | Callable = 'ddim', steps: int | Sequence[float] = 50,
               guide_scale: float | None = None, guide_rescale: float | None = None,
               discretization: str | None = None, show_progress: bool = False, seed: int | None = None,
               condition_fn: Callable | None = None, clamp: float | None = None, percentile: float | None = None,
               t_max: float | None = None, t_min: float | None = None,
               discard_penultimate_step: bool | None = None, return_intermediate: str | None = None,
               intermediate_callback: Callable | None = None, x: torch.Tensor | None = None,
               denoising_strength: float = 1.0, denoising_start: float | None = None,
               denoising_end: float | None = None, prev_timestep: str = 'next', cuda_graph: bool = False,
               **kwargs: Any) -> torch.Tensor | tuple[torch.Tensor, list]:
        """Run `solver` from `noise` (N(0, I), shaped like a sample) and return x0.

        img2img: with a clean latent `x` and denoising_strength < 1 the run starts part-way
        (int(steps * strength) steps) from x noised by `noise` (drawn from `seed` when None);
        strength 1 ignores x. denoising_start / denoising_end (fractions of the training
        timesteps, diffusers' SDXL base -> refiner split): the run skips the visited timesteps
        at or above T - start * T, taking x as the model's x_t at the first one left (not noised
        again), or stops before those below T - end * T and returns the model's x_t there (not
        x0). discretization None means linspace. discard_penultimate_step
        None takes the sampler's default. return_intermediate 'x0' or 'xt' also returns one
        tensor per step; `intermediate_callback` gets the same value (x0 by default).
        prev_timestep 'strided' (samplers with a `sigmas_to` argument: ddim, ddpm) steps each
        t to t - T // N as diffusers' DDIMScheduler does, then reads the sample at the next
        visited timestep; 'next' (default) steps to the next visited timestep.
        cuda_graph: on CUDA, replay the model from a captured graph (see cuda_graph.py); not
        with condition_fn, whose gradients a graph cannot replay.
        Other kwargs go to the sampler (eta, s_noise, order, ...)."""
        if return_intermediate not in (None, 'x0', 'xt'):
            raise ConfigError(f"return_intermediate: '{return_intermediate}' is not one of None, 'x0', 'xt'")
        if prev_timestep not in PREV_TIMESTEPS:
            raise ConfigError(f"prev_timestep: '{prev_timestep}' is not one of {', '.join(PREV_TIMESTEPS)}")
        fn = resolve_sampler(solver)
        name = solver if isinstance(solver, str) else getattr(solver, '__name__', 'custom')
        if discard_penultimate_step is None:
            discard_penultimate_step = getattr(fn, 'discard_penultimate_step', False)
        if self.SPACE not in getattr(fn, 'spaces', ('vp',)):
            raise ConfigError(f'sampler {name!r} does not work on {self.SPACE} diffusion; use one of '
                              f'{", ".join(_samplers_for(self.SPACE))}')
        ref = noise if noise is not None else x
        ts, sigmas = self.sampler_sigmas(steps, discretization, t_max, t_min, discard_penultimate_step,
                                         getattr(fn, 'discrete_timesteps', False),
                                         ref.shape if ref is not None else torch.Size())
        start = strength_start(len(sigmas), denoising_strength, self.SPACE == 'flow') if x is not None else 0
        start, end = split_at(ts, self.num_timesteps, start, len(sigmas) - 1, denoising_start, denoising_end,
                              x is not None)
        sigmas = sigmas[start:end + 1]
        if prev_timestep == 'strided':
            if ts is None or 'sigmas_to' not in inspect.signature(fn).parameters:
                raise ConfigError(f"prev_timestep 'strided': sampler {name!r} only steps to the next timestep "
                                  f'(ddim and ddpm take strided steps)')
            kwargs['sigmas_to'] = self.strided_sigmas(ts)[start:end]
        if denoising_start is not None:  # x is already the model's x_t at the first timestep left
            x_init, generator = self.sampler_state(x, float(sigmas[0])), _generator(seed, x.device)
        else:
            x_init, generator = self._initial_state(noise, x, start > 0, float(sigmas[0]), seed)
        constant_weights = getattr(model, 'constant_weights', contextlib.nullcontext)
        model = maybe_graphed(model, cuda_graph and condition_fn is None, x_init.device, self.logger)
        denoise = constrain_x0(self.denoiser(model, model_kwargs, guide_scale, guide_rescale),
                               clamp, percentile, condition_fn)
        intermediates: list[torch.Tensor] = []
        # condition_fn may need autograd (e.g. classifier guidance); inference tensors cannot join it.
        grad_mode = torch.no_grad() if condition_fn is not None else torch.inference_mode()
        with grad_mode, progress_bar(len(sigmas) - 1, f'sampling ({name})',
                                     show_progress and we.is_main) as advance:
            on_step = _step_recorder(advance, return_intermediate, intermediate_callback, intermediates,
                                     self.model_input)
            options, ignored = _accepted(fn, {'generator': generator, 'callback': on_step, **kwargs})
            if ignored:
                self.logger.warning(f'sample: solver {name!r} takes no option(s) {", ".join(ignored)}; ignored')
            with constant_weights():  # packs conv weights where accel prepared the model
                out = fn(denoise, x_init, sigmas, **options)
        if float(sigmas[-1]) > 0:  # denoising_end: the model's x_t where the run stopped
            out = self.model_input(out, float(sigmas[-1]))
        return (out, intermediates) if return_intermediate is not None else out

    def _initial_state(self, noise: torch.Tensor | None, x: torch.Tensor | None, img2img: bool, sigma: float,
                       seed: int | None) -> tuple[torch.Tensor, torch.Generator]:
        """The sampler's starting point and the seeded generator: pure noise, or the clean
        latent x noised to `sigma` for img2img."""
        ref = noise if noise is not None else x
        if ref is None:
            raise ConfigError('sample: pass noise (txt2img) or x (img2img)')
        generator = _generator(seed, ref.device)
        if noise is None:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        if img2img:
            return self.noised_state(x, noise, sigma), generator
        return self.start_state(noise, sigma), generator


def _samplers_for(space: str) -> list[str]:
    names = DIFFUSION_SAMPLERS.names() + sorted(DIFFUSION_SAMPLERS.aliases())
    return [n for n in names if space in getattr(DIFFUSION_SAMPLERS.get(n), 'spaces', ('vp',))]


def _step_recorder(advance: Callable[[], None], mode: str | None, callback: Callable | None,
                   store: list, model_input: Callable) -> Callable[[dict], None]:
    """The per-step sampler callback: advances the progress bar and records x0 or x_t."""
    def on_step(info: dict) -> None:
        advance()
        if mode is None and callback is None:
            return
        if mode == 'xt':  # back from the sampler's variable to the model's x_t
            value = model_input(info['x'], float(info['sigma']))
        else:
            value = info['denoised']
        if mode is not None:
            store.append(value)
        if callback is not None:
            callback(value)
    return on_step

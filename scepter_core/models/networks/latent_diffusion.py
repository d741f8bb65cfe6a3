"""LatentDiffusion: a UNet denoising in the latent space of an autoencoder,
conditioned on text (Stable Diffusion 1.5 and 2.x, the tiny default example). How the
condition is made is one overridable piece (`condition`, `unconditional`, `model_inputs`);
LatentDiffusionXL overrides only that."""
from __future__ import annotations

import contextlib
import copy
import logging
import random
from typing import Any

import torch

from ...checkpoint import LoadReport, load_into, matches_any
from ...config import Config
from ...env import PY_RNG, we
from ...errors import ScepterError
from ...registry import BACKBONES, DIFFUSIONS, EMBEDDERS, LOSSES, MODELS, TOKENIZERS
from ..base import TrainModule, weights_constant


@MODELS.register_class()
class LatentDiffusion(TrainModule):
    """Text-to-image latent diffusion (the seed's network class)."""

    para_dict = {
        'PARAMETERIZATION': {'value': 'eps', 'choices': ('eps', 'v', 'x0'), 'description': 'What the UNet predicts.'},
        'TIMESTEPS': {'value': 1000, 'description': 'Training timesteps.'},
        'SCHEDULE_ARGS': {'value': {'NAME': 'scaled_linear', 'BETA_MIN': 0.00085, 'BETA_MAX': 0.012},
                          'description': 'Noise schedule block (NOISE_SCHEDULES).'},
        'MIN_SNR_GAMMA': {'value': None, 'type': float, 'description': 'Min-SNR loss weighting gamma (e.g. 5).'},
        'ZERO_TERMINAL_SNR': {'value': False, 'description': 'Rescale the schedule to zero terminal SNR.'},
        'NOISE_OFFSET': {'value': 0.0, 'description': 'Offset noise strength for training.'},
        'PRETRAINED_MODEL': {'value': None, 'type': str,
                             'description': 'Whole-model weights: SD single file, diffusers folder or our checkpoint.'},
        'IGNORE_KEYS': {'value': [], 'description': 'Key prefixes/regexes not to load from PRETRAINED_MODEL.'},
        'SCALE_FACTOR': {'value': 0.18215, 'type': float,
                         'description': 'Latent scale; null estimates 1/std from the first training batch.'},
        'SHIFT_FACTOR': {'value': 0.0, 'type': float,
                         'description': 'Latent shift: the diffusion sees (z - SHIFT_FACTOR) * SCALE_FACTOR (SD3: 0.0609).'},
        'SIZE_FACTOR': {'value': 8, 'description': 'Pixels per latent cell.'},
        'IMAGE_SIZE': {'value': [512, 512], 'description': 'Default [height, width] for sampling.'},
        'DEFAULT_N_PROMPT': {'value': '', 'type': str, 'description': 'Negative prompt used at test time when none is given.'},
        'TRAIN_N_PROMPT': {'value': '', 'type': str, 'description': 'Prompt that replaces a caption with probability P_ZERO.'},
        'P_ZERO': {'value': 0.0, 'description': 'Caption dropout probability (enables classifier-free guidance).'},
        'USE_EMA': {'value': False, 'description': 'Keep an EMA copy of the UNet (model_ema) and sample with it.'},
        'DIFFUSION': {'value': {'NAME': 'GaussianDiffusion'}, 'registry': 'DIFFUSIONS',
                      'description': 'Diffusion process; schedule, timesteps and parameterization come from the keys above.'},
        'DIFFUSION_MODEL': {'value': {'NAME': 'DiffusionUNet'}, 'registry': 'BACKBONES', 'description': 'The denoiser.'},
        'FIRST_STAGE_MODEL': {'value': {'NAME': 'AutoencoderKL'}, 'registry': 'MODELS', 'description': 'The autoencoder.'},
        'COND_STAGE_MODEL': {'value': {'NAME': 'FrozenCLIPEmbedder'}, 'registry': 'EMBEDDERS', 'description': 'Text encoder.'},
        'TOKENIZER': {'value': {'NAME': 'ClipTokenizer'}, 'registry': 'TOKENIZERS', 'description': 'Prompt tokenizer.'},
        'LOSS': {'value': None, 'registry': 'LOSSES', 'description': 'Elementwise loss block; LOSS_TYPE l2 when unset.'},
    }

    latent_cache = None  # a LatentCache when SOLVER.CACHE_LATENTS is on (accel/switches.py)

    def __init__(self, cfg: Config | dict, logger: logging.Logger | None = None):
        super().__init__(cfg, logger=logger)
        cfg = self.cfg
        self.model_config = cfg.DIFFUSION_MODEL
        self.first_stage_config = cfg.FIRST_STAGE_MODEL
        self.cond_stage_config = cfg.COND_STAGE_MODEL
        # With whole-model weights, the UNet and VAE (unless they load their own file) are built
        # on meta: the file's tensors become their parameters, with no random init to discard.
        with _meta_if(cfg.PRETRAINED_MODEL and not self.model_config.get('PRETRAINED_MODEL')):
            self.model = BACKBONES.build(self.model_config, logger=self.logger)
        with _meta_if(cfg.PRETRAINED_MODEL and not self.first_stage_config.get('PRETRAINED_MODEL')):
            self.first_stage_model = MODELS.build(self.first_stage_config, logger=self.logger)
        self.first_stage_model.freeze()  # trained separately (its own recipe), never by the diffusion loss
        self.cond_stage_model = EMBEDDERS.build(self.cond_stage_config, logger=self.logger) \
            if self.cond_stage_config else None
        self.tokenizer = TOKENIZERS.build(cfg.TOKENIZER, logger=self.logger) if cfg.TOKENIZER else \
            getattr(self.cond_stage_model, 'tokenizer', None)
        self.loss = LOSSES.build(cfg.LOSS, logger=self.logger) if cfg.LOSS else None
        self.diffusion = DIFFUSIONS.build(self.diffusion_config(), logger=self.logger)
        self.num_timesteps = cfg.TIMESTEPS
        self.p_zero = cfg.P_ZERO
        self.train_n_prompt = cfg.TRAIN_N_PROMPT or ''  # Scepter's recipes leave these null
        self.default_n_prompt = cfg.DEFAULT_N_PROMPT or ''
        self.size_factor = cfg.SIZE_FACTOR
        # Saved with the weights so a checkpoint carries the scale it was trained with.
        self.register_buffer('scale_factor', torch.tensor(cfg.SCALE_FACTOR if cfg.SCALE_FACTOR else 0.0))
        self.shift_factor = float(cfg.SHIFT_FACTOR or 0.0)
        self.model_ema = None
        if cfg.USE_EMA:
            self.model_ema = copy.deepcopy(self.model).requires_grad_(False).eval()
        if cfg.PRETRAINED_MODEL:
            self.load_pretrained_model(cfg.PRETRAINED_MODEL)

    def diffusion_config(self) -> Config:
        """The DIFFUSION block, with the schedule keys this network declares for it."""
        cfg = self.cfg
        diffusion = Config(cfg.DIFFUSION.to_dict())
        diffusion.update({'SCHEDULE': cfg.SCHEDULE_ARGS.to_dict(), 'TIMESTEPS': cfg.TIMESTEPS,
                          'PREDICTION_TYPE': cfg.PARAMETERIZATION, 'ZERO_TERMINAL_SNR': cfg.ZERO_TERMINAL_SNR,
                          'MIN_SNR_GAMMA': cfg.MIN_SNR_GAMMA, 'NOISE_OFFSET': cfg.NOISE_OFFSET})
        return diffusion

    @property
    def pixel_multiple(self) -> int:
        """What every training image side must be a multiple of: the VAE's factor times the
        backbone's downsampling (a UNet's levels, a transformer's patch)."""
        c = getattr(self.model, 'cfg', None) or self.cfg.DIFFUSION_MODEL  # the built backbone's, defaults filled
        levels = len(c.get('CHANNEL_MULT') or [1]) - 1
        return int(self.size_factor) * 2 ** levels * int(c.get('PATCH_SIZE') or 1)

    @property
    def latent_channels(self) -> int:
        """Channels of the noise a sample starts from."""
        return self.cfg.DIFFUSION_MODEL.IN_CHANNELS

    # ---- weights -----------------------------------------------------------------
    def load_pretrained_model(self, path: str, use_ema: bool = False) -> LoadReport:
        """Load whole-model weights from any supported format (SD single file, diffusers, ours).

        Runs before an optimizer holds the parameters, so the file's tensors are assigned,
        not copied: from a safetensors file the parameters become views of its memory map.
        Initial tensors they replace (the text encoder's, or all of them when called later)
        are released first, so two copies of the weights never coexist; a float16 file read
        into a float32 model still needs the converted copy. Without EMA weights in the file,
        `model_ema` starts as the UNet (its own copy)."""
        from ...convert import load_pipeline_state
        from ...convert.ldm import EMA_COUNTERS, EMA_PREFIX
        from ...fs import FS
        sd = load_pipeline_state(FS.get_from(path), use_ema=use_ema)
        if self.model_ema is not None and not any(k.startswith(EMA_PREFIX) and k not in EMA_COUNTERS for k in sd):
            sd.update({EMA_PREFIX + k[len('model.'):]: v.clone() for k, v in sd.items() if k.startswith('model.')})
        seen: set[int] = set()
        for key, value in sd.items():  # one tensor under two names (use_ema): each module gets its own
            if id(value) in seen:
                sd[key] = value.clone()
            seen.add(id(value))
        # Original SD files and diffusers folders carry no scale_factor: the recipe's SCALE_FACTOR stands.
        sd.setdefault('scale_factor', self.scale_factor.detach().clone())
        release_replaced(self, sd, self.cfg.IGNORE_KEYS)
        return load_into(self, sd, ignore_keys=self.cfg.IGNORE_KEYS, logger=self.logger, source=str(path),
                         assign=True)

    # ---- encoders ------------------------------------------------------------------
    def encode_first_stage(self, image: torch.Tensor, generator: torch.Generator | None = None,
                           **kwargs: Any) -> torch.Tensor:
        """Diffusion latents of images in [-1, 1]; the posterior sample draws from `generator`."""
        trainable = any(p.requires_grad for p in self.first_stage_model.parameters())
        with torch.set_grad_enabled(trainable and torch.is_grad_enabled()):
            if self.latent_cache is not None and not trainable:  # SOLVER.CACHE_LATENTS
                z = self.latent_cache.encode_images(self.first_stage_model, image, kwargs.get('latent_key'))
            elif image is None:
                raise ScepterError("the batch has no 'image' (its latents come from a cache: set SOLVER.CACHE_LATENTS)")
            else:
                z = self.first_stage_model.encode(image, generator=generator)
        if float(self.scale_factor) == 0.0:  # SCALE_FACTOR null: unit-variance latents, fixed once
            std = z.detach().float().std()
            if we.is_distributed:
                torch.distributed.all_reduce(std)
                std /= we.world_size
            self.scale_factor.fill_(1.0 / max(float(std), 1e-6))
            self.logger.info(f'SCALE_FACTOR estimated from the first batch: {float(self.scale_factor):.5f}')
        z = z - self.shift_factor if self.shift_factor else z
        return z * self.scale_factor.to(z.dtype)

    def decode_first_stage(self, z: torch.Tensor) -> torch.Tensor:
        scale = self.scale_factor
        if float(scale) == 0.0:  # SCALE_FACTOR null and no training batch seen yet (an untrained model)
            if not getattr(self, '_warned_scale', False):
                self.logger.warning('SCALE_FACTOR was never estimated (no training batch seen): decoding with 1.0')
                self._warned_scale = True
            scale = torch.ones_like(scale)
        z = z / scale.to(z.dtype)
        return self.first_stage_model.decode(z + self.shift_factor if self.shift_factor else z)

    def encode_condition(self, tokens: torch.Tensor, method: str = 'encode_text') -> torch.Tensor:
        return getattr(self.cond_stage_model, method)(tokens)

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor | dict[str, torch.Tensor]:
        def encode(texts: list[str]) -> torch.Tensor:
            if self.tokenizer is None:  # the embedder tokenizes itself (HFEmbedder, T5PlusClipFluxEmbedder)
                return self.cond_stage_model.encode(texts)
            return self.encode_condition(self.tokenizer(texts).to(we.device_id))
        if self.latent_cache is not None:  # SOLVER.CACHE_LATENTS: memoised while the text encoder is frozen
            return self.latent_cache.encode_texts(self.cond_stage_model, prompts, encode)
        return encode(prompts)

    # ---- conditioning: the piece a model family overrides (LatentDiffusionXL) ------------
    def condition_keys(self) -> tuple[str, ...]:
        """Batch keys besides the prompt that the condition reads (forward_test takes them
        out of its keyword arguments)."""
        return ()

    def condition(self, prompt: list[str], inputs: dict[str, Any], size: tuple[int, int],
                  train: bool = False) -> Any:
        """The condition for `prompt` (and `inputs`, for images of `size` pixels)."""
        return self.encode_prompts(prompt)

    def unconditional(self, n_prompt: list[str], inputs: dict[str, Any], size: tuple[int, int]) -> Any:
        """The negative condition that classifier-free guidance steers away from."""
        return self.condition(n_prompt, inputs, size)

    def model_inputs(self, cond: Any) -> dict[str, Any]:
        """Backbone keyword arguments for a condition: a conditioner's 'vector' is the UNet's `y`."""
        if isinstance(cond, dict) and 'vector' in cond:
            cond = {('y' if k == 'vector' else k): v for k, v in cond.items()}
        return {'cond': cond}

    def init_latents(self, init_image: torch.Tensor, batch: int, generator: torch.Generator) -> torch.Tensor:
        """img2img: latents of init images [N, 3, H, W] in [0, 1] (N = 1 or `batch`). The posterior
        is sampled from the run's generator before its noise is drawn, as diffusers' img2img
        pipelines do, so the same seed gives the same image."""
        image = init_image if init_image.dim() == 4 else init_image[None]
        if image.shape[0] not in (1, batch):
            raise ValueError(f'{image.shape[0]} init images for {batch} prompts (give 1 or {batch})')
        vae = next(self.first_stage_model.parameters())
        z = self.encode_first_stage(image.to(vae.device, vae.dtype) * 2.0 - 1.0, generator=generator)
        return z.expand(batch, *z.shape[1:]) if z.shape[0] != batch else z

    def noise_sample(self, batch: int, h: int, w: int, generator: torch.Generator) -> torch.Tensor:
        c = self.latent_channels
        dev = next(self.model.parameters()).device
        return torch.randn(batch, c, h, w, generator=generator, device=generator.device).to(dev)

    # ---- training --------------------------------------------------------------------
    def forward_train(self, image: torch.Tensor | None = None, noise: torch.Tensor | None = None,
                      prompt: list[str] | None = None, **kwargs: Any) -> dict[str, Any]:
        x_start = self.encode_first_stage(image, **kwargs)
        t = self.diffusion.sample_t(x_start.shape[0], x_start.device)
        context = {}
        if prompt and self.cond_stage_model is not None:
            prompt = [self.train_n_prompt if PY_RNG.random() < self.p_zero else p for p in prompt]
            size = image.shape[-2:] if image is not None else [d * self.size_factor for d in x_start.shape[-2:]]
            context = self.condition(prompt, kwargs, tuple(size), train=True)
        loss = self.diffusion.loss(x0=x_start, t=t, model=self.model, model_kwargs=self.model_inputs(context),
                                   noise=noise, loss_fn=self.loss)
        return {'loss': loss.mean(), 'probe_data': {'prompt': prompt}}

    # ---- sampling ----------------------------------------------------------------------
    def guidance_inputs(self, prompt: list[str], n_prompt: list[str], inputs: dict[str, Any],
                        size: tuple[int, int], guide_scale: float | None) -> tuple[list[dict] | dict, float | None]:
        """(model_kwargs, classifier-free guidance scale) for the sampler: [cond, uncond]."""
        return [self.model_inputs(self.condition(prompt, inputs, size)),
                self.model_inputs(self.unconditional(n_prompt, inputs, size))], guide_scale

    @torch.no_grad()
    @weights_constant
    def forward_test(self, prompt: list[str] | None = None, n_prompt: list[str] | None = None,
                     sampler: str = 'ddim', sample_steps: int = 50, seed: int = 2023,
                     guide_scale: float = 7.5, guide_rescale: float = 0.5, discretization: str = 'trailing',
                     image_size: list[int] | int | None = None, use_ema: bool | None = None,
                     show_progress: bool = False, init_image: torch.Tensor | None = None, strength: float = 0.8,
                     init_latent: torch.Tensor | None = None, denoising_start: float | None = None,
                     denoising_end: float | None = None, **kwargs: Any) -> list[dict[str, Any]]:
        """Images (dicts with 'prompt', 'n_prompt', 'image' [3, H, W] in [0, 1]) for `prompt`.

        img2img: `init_image` [N, 3, H, W] in [0, 1] (its size is the output's) is encoded and
        noised to the first of int(steps * strength) steps. SDXL base -> refiner, as diffusers:
        `denoising_end` stops at that fraction of the training timesteps and returns 'latent'
        (the model's x_t there) instead of 'image'; `init_latent` with `denoising_start` goes on
        from such a latent."""
        if isinstance(prompt, str):
            prompt = [prompt]
        if not prompt:
            raise ValueError('forward_test needs at least one prompt')
        n_prompt = n_prompt if n_prompt is not None else [self.default_n_prompt] * len(prompt)
        if isinstance(n_prompt, str):
            n_prompt = [n_prompt] * len(prompt)
        if len(n_prompt) != len(prompt):
            raise ValueError(f'{len(prompt)} prompts but {len(n_prompt)} negative prompts')
        seed = seed if seed is not None and seed >= 0 else random.randint(0, 2 ** 32 - 1)
        dev = next(self.model.parameters()).device
        g = torch.Generator(device=dev).manual_seed(seed)
        h, w = (image_size, image_size) if isinstance(image_size, int) else (image_size or self.cfg.IMAGE_SIZE)
        if init_image is not None or init_latent is not None:  # img2img: the output has the input's size
            h, w = init_image.shape[-2:] if init_image is not None else \
                (d * self.size_factor for d in init_latent.shape[-2:])
        inputs = {k: kwargs.pop(k) for k in self.condition_keys() if k in kwargs}
        model_kwargs, guide_scale = self.guidance_inputs(prompt, n_prompt, inputs, (h, w), guide_scale)
        x = self.init_latents(init_image, len(prompt), g) if init_image is not None else None
        if init_latent is not None:
            x = init_latent.to(dev).expand(len(prompt), *init_latent.shape[-3:])
        noise = self.noise_sample(len(prompt), h // self.size_factor, w // self.size_factor, g)
        use_ema = self.model_ema is not None if use_ema is None else use_ema
        net = self.model_ema if use_ema and self.model_ema is not None else self.model
        samples = self.diffusion.sample(solver=sampler, noise=noise, model=net, model_kwargs=model_kwargs,
                                        steps=sample_steps, guide_scale=guide_scale, guide_rescale=guide_rescale,
                                        discretization=discretization, show_progress=show_progress, seed=seed,
                                        x=x, denoising_strength=strength if x is not None else 1.0,
                                        denoising_start=denoising_start, denoising_end=denoising_end, **kwargs)
        if denoising_end is not None:  # a first pass: the refiner goes on from these latents
            return [{'prompt': p, 'n_prompt': n, 'latent': z} for p, n, z in zip(prompt, n_prompt, samples)]
        x = self.decode_first_stage(samples).float()
        x = torch.clamp((x + 1.0) / 2.0, 0.0, 1.0)
        return [{'prompt': p, 'n_prompt': n, 'image': img} for p, n, img in zip(prompt, n_prompt, x)]


def _meta_if(condition: Any) -> contextlib.AbstractContextManager:
    return torch.device('meta') if condition else contextlib.nullcontext()


def release_replaced(module: torch.nn.Module, sd: dict[str, torch.Tensor], ignore_keys: list[str]) -> int:
    """Move to the meta device every parameter and buffer of `module` that `sd` will replace
    (same name and shape, not ignored), freeing its memory before the new tensors are read.
    Returns the number released; `load_into` gives the meta ones the new tensors."""
    released = 0
    for name, sub in module.named_modules():
        prefix = f'{name}.' if name else ''
        for table in (sub._parameters, sub._buffers):
            for key, t in table.items():
                full = prefix + key
                new = sd.get(full)
                if t is None or t.is_meta or new is None or tuple(new.shape) != tuple(t.shape) \
                        or key in sub._non_persistent_buffers_set or matches_any(full, ignore_keys or ()):
                    continue
                meta = torch.empty_like(t, device='meta')
                table[key] = torch.nn.Parameter(meta, t.requires_grad) if isinstance(t, torch.nn.Parameter) else meta
                released += 1
    return released

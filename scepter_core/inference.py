"""Inference without a solver: build only the model, load weights, sample, write PNGs."""
from __future__ import annotations

import inspect
import logging
import random
from pathlib import Path
from typing import Any

import torch

from .config import Config, apply_overrides
from .env import we
from .errors import ConfigError
from .families import SD15_RECIPE  # noqa: F401  (re-exported: tests and tools read it here)
from .imports import import_user_code, recipe_imports, untrusted_note
from .models.base import device_autocast
from .no_recipe import find_config, weights_recipe
from .registry import MODELS
from .sample_args import BY_KEY, check_sample_args, check_sampler, sample_kwargs
from .utils.images import format_parameters, make_grid, parse_parameters, save_png


def resolve_weights(path: str) -> str:
    """A work dir, checkpoints dir, step dir or `latest` pointer -> the weights file."""
    from .checkpoint import WEIGHTS, find_step_dir
    step = find_step_dir(path)
    return str(step / WEIGHTS) if step is not None else str(path)


def _clear_sub_weights(model_cfg: Config) -> None:
    """Whole-model weights replace the submodels' own PRETRAINED_MODEL files."""
    for key in ('DIFFUSION_MODEL', 'FIRST_STAGE_MODEL'):
        if model_cfg.get(key):
            model_cfg[key]['PRETRAINED_MODEL'] = None


def adapter_checkpoint(path: str) -> str | None:
    """The weights file of a LoRA run's checkpoint or of a LoRA file (`path`: a file, work
    dir, step dir or `latest` pointer), or None when `path` holds whole-model weights."""
    from .checkpoint import SAFETENSORS_SUFFIXES
    from .fs import is_uri
    from .tuners import lora_file_format
    weights = resolve_weights(path)
    if is_uri(weights) or not weights.endswith(SAFETENSORS_SUFFIXES) or not Path(weights).is_file():
        return None
    return weights if lora_file_format(weights) else None


def use_pretrained(model_cfg: Config, pretrained_model: str) -> str | None:
    """Point `model_cfg` at `pretrained_model`. Whole-model weights replace PRETRAINED_MODEL
    (and the submodels' own files); a LoRA run's checkpoint (adapters only) keeps the recipe's
    base model, and its weights file is returned, to be loaded on top of that base."""
    adapters = adapter_checkpoint(pretrained_model)
    if adapters is None:
        _clear_sub_weights(model_cfg)
        model_cfg['PRETRAINED_MODEL'] = resolve_weights(pretrained_model)
        return None
    if not model_cfg.get('PRETRAINED_MODEL') and not (model_cfg.get('DIFFUSION_MODEL') or {}).get('PRETRAINED_MODEL'):
        raise ConfigError(f"'{pretrained_model}' holds only LoRA adapters and the recipe names no base model "
                          f'(SOLVER.MODEL.PRETRAINED_MODEL): pass --cfg with a recipe that does, or load the '
                          f'adapters on top of the base (infer: --lora, convert: --merge-lora)')
    return adapters


def build_model(pretrained_model: str | None, cfg_path: str | None = None, overrides: list[str] = (),
                imports: list[str] = (), logger: logging.Logger | None = None,
                blocks: dict[str, Any] | None = None, trust_imports: bool = False) -> tuple[torch.nn.Module, Config]:
    """The model of a recipe with whole-model weights loaded (a LoRA run: its base model and
    its adapters); returns (model, recipe). `blocks` replace the recipe's model blocks.
    `imports` (--import) always run; the recipe's IMPORTS only with `trust_imports`: the
    config.yaml beside a checkpoint is anyone's file."""
    if cfg_path or not pretrained_model:
        path = Path(cfg_path) if cfg_path else find_config(pretrained_model)
        cfg = Config.load(path)
    else:  # the recipe beside the checkpoint, else the family's, read off the weights
        cfg, path, note = weights_recipe(pretrained_model)
        (logger or logging.getLogger('scepter')).info(note)
    apply_overrides(cfg, overrides)
    import_user_code(list(imports), label='--import')
    items = recipe_imports(cfg)
    if trust_imports:
        import_user_code(items, base_dir=str(path))
    try:
        return _build_loaded(cfg, path, pretrained_model, blocks, logger)
    except ConfigError as e:
        if trust_imports or not items:
            raise
        raise ConfigError(f'{e}\n{untrusted_note(items)}') from e


def _build_loaded(cfg: Config, path: Path, pretrained_model: str | None, blocks: dict[str, Any] | None,
                  logger: logging.Logger | None) -> tuple[torch.nn.Module, Config]:
    model_cfg = cfg.get_path('SOLVER.MODEL') or cfg.get('MODEL')
    if not model_cfg:
        raise ConfigError(f"'{path}': no SOLVER.MODEL block to build")
    for key, block in (blocks or {}).items():
        model_cfg[key] = block
    adapters = use_pretrained(model_cfg, pretrained_model) if pretrained_model else None
    if not pretrained_model and not model_cfg.get('PRETRAINED_MODEL'):
        raise ConfigError('no weights: pass --pretrained-model (our checkpoint, an SD single file or a diffusers folder)')
    model = MODELS.build(model_cfg, logger=logger)
    if adapters:
        from .tuners import load_adapter
        load_adapter(model, adapters, logger=logger)
    return model.eval().to(we.device), cfg


def merged_weights(pretrained_model: str, lora: list[str], cfg_path: str | None = None,
                   blocks: dict[str, Any] | None = None, use_ema: bool = False,
                   logger: logging.Logger | None = None, trust_imports: bool = False
                   ) -> tuple[dict[str, torch.Tensor], Config]:
    """Whole-model weights with LoRA files (`PATH[:SCALE]`, as `--lora`) folded in, for
    `scepter convert --merge-lora`: the model `build_model` makes, the files applied, every
    adapter merged; no adapter tensors remain. `use_ema`: the EMA copy becomes the UNet.
    Returns (state dict, recipe)."""
    from .convert import drop_ema, select_ema
    from .tuners import apply_lora_files, merge_lora
    model, cfg = build_model(pretrained_model, cfg_path, logger=logger, blocks=blocks, trust_imports=trust_imports)
    apply_lora_files(model, list(lora), logger)
    sd = {k: v.detach().cpu() for k, v in merge_lora(model, logger).state_dict().items()}
    if use_ema:
        sd = drop_ema(select_ema(sd, f'{pretrained_model} (built without USE_EMA)'))
    return sd, cfg


def prepare_model(pretrained_model: str | None, cfg_path: str | None = None, overrides: list[str] = (),
                  imports: list[str] = (), lora: list[str] = (), logger: logging.Logger | None = None,
                  trust_imports: bool = False) -> tuple[torch.nn.Module, Config]:
    """`build_model` plus LoRA files (`PATH[:SCALE]`) and the recipe's inference switches
    (AMP dtype, channels_last, compile): the model ready for `sample_images`."""
    from .accel import apply
    from .accel.switches import apply_model_switches, cast_parameters
    logger = logger or logging.getLogger('scepter')
    model, cfg = build_model(pretrained_model, cfg_path, overrides, imports, logger, trust_imports=trust_imports)
    if lora:
        from .tuners import apply_lora_files
        apply_lora_files(model, list(lora))
    solver = cfg.get('SOLVER') or Config()
    if _amp(solver):  # nothing trains here: hold the weights in the compute dtype (no re-cast at every step)
        cast_parameters(model.requires_grad_(False), _dtype(solver))
    apply(model, 'infer', solver, logger)  # the CPU fast paths, as `scepter test` applies them
    apply_model_switches(model, solver, we.device, logger)
    return model, cfg


def _dtype(solver: Config) -> torch.dtype:
    return {'float16': torch.float16, 'bfloat16': torch.bfloat16}.get(solver.get('DTYPE'), torch.float32)


def _amp(solver: Config) -> bool:
    return bool(solver.get('USE_AMP')) and we.device.type != 'cpu'


def load_init_image(path: str, size: list[int] | None = None, multiple: int = 8) -> torch.Tensor:
    """img2img's start: the image file as [1, 3, H, W] in [0, 1], at `size` [H, W] or at its own
    size rounded down to a multiple of `multiple`, resized with Lanczos as diffusers' image
    processor does (an image already that size is used as it is)."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    from .errors import ScepterError
    from .fs import FS
    try:
        with Image.open(FS.get_from(path)) as im:
            image = im.convert('RGB')
    except (OSError, UnidentifiedImageError) as e:
        raise ScepterError(f"--init-image '{path}': not a readable image ({e})") from e
    h, w = (int(v) for v in size) if size else (d - d % multiple for d in (image.height, image.width))
    if h < multiple or w < multiple:
        raise ScepterError(f"--init-image '{path}': {image.width}x{image.height} is smaller than {multiple} px")
    if (w, h) != image.size:
        image = image.resize((w, h), Image.LANCZOS)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]


def sample_images(model: torch.nn.Module, cfg: Config, prompts: list[str], n_prompt: str | None = None,
                  sample_overrides: dict[str, Any] | None = None,
                  **extra: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """forward_test over `prompts` with the recipe's SAMPLE_ARGS and `sample_overrides`;
    returns (outputs, the SAMPLE_ARGS used, with a random seed (-1 or none) drawn here so it
    can be recorded). `extra` goes to forward_test (e.g. intermediate_callback). With
    INIT_IMAGE (img2img) the image's size is the output's unless `sample_overrides` sets one."""
    args = sample_settings(model, cfg, sample_overrides)
    if args.get('INIT_IMAGE'):
        image = load_init_image(args['INIT_IMAGE'], (sample_overrides or {}).get('IMAGE_SIZE'),
                                int(getattr(model, 'size_factor', 8)))
        extra['init_image'] = image.to(we.device)
        args['IMAGE_SIZE'] = list(image.shape[-2:])
    check_image_size(model, args.get('IMAGE_SIZE'), len(prompts))
    kwargs = sample_kwargs(args)
    if n_prompt is not None:
        kwargs['n_prompt'] = [n_prompt] * len(prompts)
    solver = cfg.get('SOLVER') or Config()
    with torch.inference_mode(), device_autocast(we.device, _dtype(solver), enabled=_amp(solver)):
        outs = model.forward_test(prompt=list(prompts), show_progress=True, **kwargs, **extra)
    return outs, args


def sample_settings(model: torch.nn.Module, cfg: Config, sample_overrides: dict[str, Any] | None = None
                    ) -> dict[str, Any]:
    """The SAMPLE_ARGS a sample uses: the recipe's, `sample_overrides` over them, forward_test's
    defaults for the rest, a random seed (-1 or none) drawn; each value checked."""
    args = dict(cfg.get_path('SOLVER.SAMPLE_ARGS') or {})
    args.update({k: v for k, v in (sample_overrides or {}).items() if v is not None})
    _fill_defaults(model, args)
    check_sample_args(args)
    if args.get('SAMPLER') is not None and isinstance(args['SAMPLER'], str):
        check_sampler(args['SAMPLER'])
    if args.get('SEED') is not None and int(args['SEED']) < 0:
        args['SEED'] = random.randint(0, 2 ** 32 - 1)
    return args


def size_multiple(model: torch.nn.Module) -> int:
    """Pixels per latent cell times the backbone's patch side: image sides must be multiples of it."""
    backbone_cfg = getattr(getattr(model, 'model', None), 'cfg', None)
    patch = backbone_cfg.get('PATCH_SIZE', 1) if isinstance(backbone_cfg, dict) else 1
    return int(getattr(model, 'size_factor', 1) or 1) * int(patch or 1)


def _decoder_channels(model: torch.nn.Module) -> int:
    """Channels the autoencoder's decoder holds at full resolution (SD's: 128)."""
    conv = getattr(getattr(getattr(model, 'first_stage_model', None), 'decoder', None), 'conv_out', None)
    return int(getattr(conv, 'in_channels', 128))


def _memory_free(device: torch.device) -> int | None:
    """Bytes a new allocation may take on `device` (None: unknown)."""
    if device.type == 'cuda':
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    try:
        with open('/proc/meminfo') as f:
            info = dict(line.split(':', 1) for line in f)
        return int(info['MemAvailable'].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def check_image_size(model: torch.nn.Module, size: Any, batch: int) -> None:
    """Before anything is allocated: the sides are multiples of the model's size factor, and
    decoding `batch` images of that size fits in memory (the decoder's full-resolution
    activations, a lower bound)."""
    if size is None:
        return
    h, w = (size, size) if isinstance(size, int) else size
    factor = size_multiple(model)
    if h % factor or w % factor:
        raise ConfigError(f"'--size' / SAMPLE_ARGS.IMAGE_SIZE: {h} x {w} is not a multiple of {factor}, this "
                          f"model's size factor (pixels per latent cell x patch side); e.g. "
                          f"{max(factor, h // factor * factor)} x {max(factor, w // factor * factor)}")
    device = next(model.parameters()).device
    need = batch * h * w * _decoder_channels(model) * 4 * 2
    free = _memory_free(device)
    if free is not None and need > free:
        raise ConfigError(f"'--size' / SAMPLE_ARGS.IMAGE_SIZE: decoding {batch} image(s) of {h} x {w} needs at "
                          f"least {need / 2 ** 30:.1f} GiB, more than the {free / 2 ** 30:.1f} GiB free on "
                          f"{device.type}: use a smaller --size or --batch-size")


def _fill_defaults(model: torch.nn.Module, args: dict[str, Any]) -> None:
    """Settings the recipe leaves out take forward_test's own defaults, filled in here so that
    what is recorded (png_parameters) is what was used."""
    params = inspect.signature(model.forward_test).parameters
    keys = ('SAMPLER', 'SAMPLE_STEPS', 'SEED', 'GUIDE_SCALE', 'GUIDE_RESCALE', 'DISCRETIZATION')
    for key in keys + (('STRENGTH',) if args.get('INIT_IMAGE') else ()):
        if args.get(key) is None and BY_KEY[key].kwarg in params:
            args[key] = params[BY_KEY[key].kwarg].default
    if args.get('IMAGE_SIZE') is None and getattr(model, 'cfg', None) is not None:
        args['IMAGE_SIZE'] = model.cfg.get('IMAGE_SIZE')


def png_parameters(prompt: str, n_prompt: str | None, args: dict[str, Any], model: str | None,
                   lora: list[str] = (), batch: tuple[int, int] = (1, 0)) -> str:
    """The A1111 `parameters` text of one sampled image (`batch`: size, position)."""
    size = args.get('IMAGE_SIZE')
    h, w = (size, size) if isinstance(size, int) else (size or (None, None))
    settings = {'Steps': args.get('SAMPLE_STEPS'), 'Sampler': args.get('SAMPLER'), 'CFG scale': args.get('GUIDE_SCALE'),
                'CFG rescale': args.get('GUIDE_RESCALE'), 'Discretization': args.get('DISCRETIZATION'),
                'Prev timestep': args.get('PREV_TIMESTEP'), 'Seed': args.get('SEED'),
                'Size': f'{w}x{h}' if h else None, 'Model': model, 'LoRA': ' '.join(lora) or None,
                'Init image': args.get('INIT_IMAGE') or None,
                'Denoising strength': args.get('STRENGTH') if args.get('INIT_IMAGE') else None,
                'Refiner': args.get('REFINER'), 'Refiner switch at': args.get('REFINER_SWITCH_AT'),
                'Batch size': batch[0] if batch[0] > 1 else None, 'Batch pos': batch[1] if batch[0] > 1 else None}
    return format_parameters(prompt, n_prompt, settings)


def sample_args_from_parameters(text: str) -> tuple[str, str | None, dict[str, Any], list[str]]:
    """The inverse of png_parameters: (prompt, negative prompt, SAMPLE_ARGS, LoRA specs)."""
    prompt, n_prompt, s = parse_parameters(text)
    args: dict[str, Any] = {'SAMPLER': s.get('Sampler'), 'DISCRETIZATION': s.get('Discretization'),
                            'PREV_TIMESTEP': s.get('Prev timestep'), 'INIT_IMAGE': s.get('Init image')}
    for key, name, kind in (('SAMPLE_STEPS', 'Steps', int), ('SEED', 'Seed', int), ('GUIDE_SCALE', 'CFG scale', float),
                            ('GUIDE_RESCALE', 'CFG rescale', float), ('STRENGTH', 'Denoising strength', float)):
        if s.get(name) is not None:
            args[key] = kind(s[name])
    if s.get('Size'):
        w, h = (int(v) for v in s['Size'].split('x'))
        args['IMAGE_SIZE'] = [h, w]
    return prompt, n_prompt or None, {k: v for k, v in args.items() if v is not None}, s.get('LoRA', '').split()


GRID_MAX = 64  # images in grid.png: the first ones (a grid of 100000 images would not fit in memory)


def _check_img2img(sample_overrides: dict[str, Any], refiner: str | None, refiner_switch: float) -> None:
    from .errors import ScepterError
    strength = sample_overrides.get('STRENGTH')
    if strength is not None and not 0.0 < float(strength) <= 1.0:
        raise ScepterError(f'--strength: expected a value in (0, 1], got {strength}')
    if refiner is not None and not 0.0 < float(refiner_switch) < 1.0:
        raise ScepterError(f'--refiner-switch: expected a value in (0, 1), got {refiner_switch}')
    if sample_overrides.get('INIT_IMAGE'):
        load_init_image(sample_overrides['INIT_IMAGE'])


def generate_images(prompts: list[str], pretrained_model: str | None, out_dir: str, n_prompt: str | None = None,
                    cfg_path: str | None = None, overrides: list[str] = (), imports: list[str] = (),
                    lora: list[str] = (), sample_overrides: dict[str, Any] | None = None,
                    refiner: str | None = None, refiner_switch: float = 0.8,
                    logger: logging.Logger | None = None, batch_size: int = 8,
                    trust_imports: bool = False) -> tuple[list[Path], Path]:
    """Sample one image per prompt, `batch_size` at a time (batch k draws its noise from seed + k);
    write `NNNNN.png` files as each batch ends (with their parameters in the PNG text chunk)
    and `grid.png` of the first GRID_MAX into out_dir. With `refiner` (SDXL base -> refiner, as
    diffusers' ensemble of expert denoisers): the model runs the timesteps above
    T - refiner_switch * T and stops (denoising_end); the refiner, built once the model is
    freed, runs the rest from its latents (denoising_start) with the same sampling settings."""
    if not prompts:
        raise ConfigError("'--num-samples': no images to sample (it must be at least 1)")
    if batch_size < 1:
        raise ConfigError(f"'--batch-size': must be at least 1, got {batch_size}")
    check_sample_args(sample_overrides or {})  # the command line's values, before the model is built
    if isinstance((sample_overrides or {}).get('SAMPLER'), str):
        check_sampler(sample_overrides['SAMPLER'])
    _check_img2img(sample_overrides or {}, refiner, refiner_switch)  # before minutes of model loading
    model, cfg = prepare_model(pretrained_model, cfg_path, overrides, imports, lora, logger, trust_imports)
    args = sample_settings(model, cfg, sample_overrides)
    batches = [prompts[start:start + batch_size] for start in range(0, len(prompts), batch_size)]

    def seeded(given: dict[str, Any], k: int) -> dict[str, Any]:
        # only the caller's values and the seed: the rest (an init image's size) is decided per batch
        seed = {'SEED': (int(args['SEED']) + k) % 2 ** 32} if args.get('SEED') is not None else {}
        return {**given, **seed}
    given = dict(sample_overrides or {})
    if refiner is not None:
        handed = [torch.stack([o['latent'] for o in sample_images(
            model, cfg, chunk, n_prompt, seeded(given, k), denoising_end=refiner_switch)[0]])
            for k, chunk in enumerate(batches)]
        del model  # one of the two models in memory at a time
        model, cfg = prepare_model(refiner, logger=logger)
        # the base's settings (steps, guidance, sampler: the split must line up), not its image's
        given = {k: v for k, v in args.items() if k not in ('INIT_IMAGE', 'IMAGE_SIZE', 'STRENGTH')}
    out = Path(out_dir)
    paths, shown = [], []
    for k, chunk in enumerate(batches):
        if refiner is None:
            outs, used = sample_images(model, cfg, chunk, n_prompt, seeded(given, k))
        else:
            outs, _ = sample_images(model, cfg, chunk, n_prompt, seeded(given, k),
                                    denoising_start=refiner_switch, init_latent=handed[k])
            used = {**args, **seeded({}, k), 'REFINER': refiner, 'REFINER_SWITCH_AT': refiner_switch}
        for i, o in enumerate(outs):
            text = png_parameters(o['prompt'], n_prompt, used, pretrained_model, lora, (len(outs), i))
            paths.append(save_png(o['image'], out / f'{len(paths):05d}.png', text))
            if len(shown) < GRID_MAX:
                shown.append(o)
    grid = out / 'grid.png'
    make_grid([o['image'] for o in shown], [o['prompt'] for o in shown]).save(grid)
    return paths, grid

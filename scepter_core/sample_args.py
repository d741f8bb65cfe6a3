"""The sampling arguments, declared once: each SAMPLE_ARGS key (Scepter's names), the
`forward_test` keyword it becomes, its default, type, description and `scepter infer`
spellings (Scepter's aliases included). The solver's SAMPLE_ARGS default, probes, eval,
test and `scepter infer` all read this table. No torch here: the CLI imports it at start."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from .errors import ConfigError, did_you_mean


@dataclass(frozen=True)
class SampleArg:
    key: str                        # SAMPLE_ARGS key
    kwarg: str | None               # forward_test keyword; None: read by the solver, not the sampler
    default: Any                    # None: not in the solver's default block (forward_test decides)
    type: type
    description: str
    flags: tuple[str, ...] = ()     # `scepter infer` spellings; none: set it with --set SOLVER.SAMPLE_ARGS.KEY=...
    choices: tuple | None = None


ARGS: tuple[SampleArg, ...] = (
    SampleArg('SAMPLER', 'sampler', 'ddim', str, 'ddim, euler, dpmpp_2m_karras, ...', ('--sampler',)),
    SampleArg('SAMPLE_STEPS', 'sample_steps', 50, int, 'Sampling steps.',
              ('--steps', '--sample_steps', '--sample-steps')),
    SampleArg('SEED', 'seed', 2023, int, 'Seed (-1: random).', ('--seed',)),
    SampleArg('GUIDE_SCALE', 'guide_scale', 7.5, float, 'CFG scale.', ('--guide-scale', '--guide_scale')),
    SampleArg('GUIDE_RESCALE', 'guide_rescale', 0.5, float, 'CFG rescale.', ('--guide-rescale', '--guide_rescale')),
    SampleArg('DISCRETIZATION', 'discretization', 'trailing', str, 'leading | linspace | trailing.',
              ('--discretization',), ('leading', 'linspace', 'trailing')),
    SampleArg('IMAGE_SIZE', 'image_size', [512, 512], list, 'Height and width in pixels.', ('--size',)),
    SampleArg('RUN_TRAIN_N', None, False, bool, "Scepter's switch; the training negative prompt is the model's."),
    SampleArg('N_PROMPT', 'n_prompt', None, str, 'Negative prompt.', ('--n-prompt', '--n_prompt')),
    SampleArg('PREV_TIMESTEP', 'prev_timestep', None, str,
              "'strided': ddim / ddpm step from t to t - T/N, as diffusers' schedulers do."),
    SampleArg('INIT_IMAGE', None, None, str, 'img2img: the image to start from (its size, a multiple of 8, '
              'unless --size).'),
    SampleArg('STRENGTH', 'strength', None, float, 'img2img: how far the init image is noised, (0, 1]: '
              'int(steps x strength) steps run.', ('--strength', '--denoising-strength')),
    SampleArg('CUDA_GRAPH', 'cuda_graph', None, bool,
              'On CUDA: replay each UNet step from a captured graph (faster at small batches).', ('--cuda-graph',)),
)
BY_KEY = {a.key: a for a in ARGS}


def default_sample_args() -> dict[str, Any]:
    """The solver's SAMPLE_ARGS default block (a fresh copy)."""
    return {a.key: list(a.default) if isinstance(a.default, list) else a.default
            for a in ARGS if a.default is not None}


def sample_kwargs(sample_args: Mapping | None) -> dict[str, Any]:
    """SAMPLE_ARGS keys (any case) -> forward_test keyword arguments; unset (None) values are
    left to forward_test. An unknown key is an error naming it and the known ones."""
    where = getattr(sample_args, 'path', '') or 'SAMPLE_ARGS'
    out = {}
    for k, v in (sample_args or {}).items():
        arg = BY_KEY.get(str(k).upper())
        if arg is None:
            raise ConfigError(f"'{where}.{k}': unknown sampling argument." + did_you_mean(str(k).upper(), BY_KEY) +
                              f" Known: {', '.join(BY_KEY)}")
        if v is not None and arg.kwarg is not None:
            out[arg.kwarg] = v
    return out


MAX_SAMPLE_STEPS = 10_000
MAX_SIDE = 1 << 20  # pixels; a real limit is the memory estimate, made once the model is known


def _where(arg: SampleArg, block: str | None) -> str:
    """'SOLVER.SAMPLE_ARGS.KEY' in a recipe's block, else the option and the key."""
    if block:
        return f"'{block}.{arg.key}'"
    return f"'{arg.flags[0]}' / SAMPLE_ARGS.{arg.key}" if arg.flags else f'SAMPLE_ARGS.{arg.key}'


def _number_problem(arg: SampleArg, v: Any) -> str | None:
    if arg.type is int and (isinstance(v, bool) or not isinstance(v, int)):
        return f'expected an integer, got {v!r}'
    if arg.type is float and (isinstance(v, bool) or not isinstance(v, (int, float))):
        return f'expected a number, got {v!r}'
    if not math.isfinite(v):
        return f'must be a finite number, got {v!r}'
    if arg.key == 'SAMPLE_STEPS' and not 1 <= v <= MAX_SAMPLE_STEPS:
        return f'must be between 1 and {MAX_SAMPLE_STEPS}, got {v}'
    if arg.key == 'GUIDE_RESCALE' and not 0 <= v <= 1:
        return f'must be between 0 and 1, got {v}'
    return None


def _size_problem(v: Any) -> str | None:
    sides = [v, v] if isinstance(v, int) and not isinstance(v, bool) else v
    if not isinstance(sides, (list, tuple)) or len(sides) != 2 or \
            not all(isinstance(s, int) and not isinstance(s, bool) for s in sides):
        return f'expected [height, width] in pixels, got {v!r}'
    if not all(1 <= s <= MAX_SIDE for s in sides):
        return f'sides must be between 1 and {MAX_SIDE} pixels, got {sides[0]} x {sides[1]}'
    return None


def check_sampler(name: str, block: str | None = None) -> None:
    """An unknown sampler is a ConfigError naming it and every choice."""
    from .registry import DIFFUSION_SAMPLERS
    if name not in DIFFUSION_SAMPLERS:
        choices = DIFFUSION_SAMPLERS.names()
        raise ConfigError(f"{_where(BY_KEY['SAMPLER'], block)}: unknown sampler '{name}'." +
                          did_you_mean(name, choices) + f" Choices: {', '.join(choices)}")


def check_sample_args(sample_args: Mapping, block: str | None = None) -> None:
    """A ConfigError naming the option and the value for a setting no sampler can use: zero or
    a huge number of steps, a NaN or infinite guidance scale, a size that is not two positive
    integers, an unknown discretization. Unset (None) values are not checked. `block`: the
    recipe's block the values come from (errors name its keys), else the command line."""
    for k, v in (sample_args or {}).items():
        arg = BY_KEY.get(str(k).upper())
        if arg is None or v is None:
            continue
        problem = None
        if arg.type in (int, float):
            problem = _number_problem(arg, v)
        elif arg.key == 'IMAGE_SIZE':
            problem = _size_problem(v)
        elif arg.choices and v not in arg.choices:
            problem = f"{v!r} is not one of {', '.join(arg.choices)}"
        if problem:
            raise ConfigError(f'{_where(arg, block)}: {problem}')

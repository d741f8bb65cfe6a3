"""The sampling arguments, declared once: each SAMPLE_ARGS key (Scepter's names), the
`forward_test` keyword it becomes, its default, type, description and `scepter infer`
spellings (Scepter's aliases included). The solver's SAMPLE_ARGS default, probes, eval,
test and `scepter infer` all read this table. No torch here: the CLI imports it at start."""
from __future__ import annotations

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

"""The sampling arguments are declared once (scepter_core/sample_args.py): the solver's
SAMPLE_ARGS default, the network's forward_test defaults and `scepter infer`'s options all
agree with that one table, and SAMPLE_ARGS blocks translate through it."""
from __future__ import annotations

import inspect

import pytest

from scepter_core.errors import ConfigError
from scepter_core.params import declared_params
from scepter_core.registry import MODELS, SOLVERS
from scepter_core.sample_args import ARGS, BY_KEY, default_sample_args, sample_kwargs


def test_the_solver_default_block_is_the_declaration():
    solver_default = declared_params(SOLVERS.get('LatentDiffusionSolver'))['SAMPLE_ARGS'].default
    assert solver_default == default_sample_args()
    assert solver_default == {'SAMPLER': 'ddim', 'SAMPLE_STEPS': 50, 'SEED': 2023, 'GUIDE_SCALE': 7.5,
                              'GUIDE_RESCALE': 0.5, 'DISCRETIZATION': 'trailing', 'IMAGE_SIZE': [512, 512],
                              'RUN_TRAIN_N': False}  # Scepter's keys, as its recipes write them
    default_sample_args()['IMAGE_SIZE'].append(1)  # a fresh copy each time
    assert default_sample_args()['IMAGE_SIZE'] == [512, 512]


def test_forward_test_takes_every_keyword_with_the_declared_default():
    params = inspect.signature(MODELS.get('LatentDiffusion').forward_test).parameters
    for arg in ARGS:
        if arg.kwarg is None:
            continue
        if arg.kwarg in params:
            if arg.default is not None and not isinstance(arg.default, list):
                assert params[arg.kwarg].default == arg.default, arg.key
        else:  # passed on through **kwargs to the diffusion's sampler
            assert any(p.kind is p.VAR_KEYWORD for p in params.values()), arg.key


def test_blocks_translate_to_keywords_in_any_case():
    kwargs = sample_kwargs({'sampler': 'euler', 'SAMPLE_STEPS': 4, 'Guide_Scale': 2.0, 'SEED': None,
                            'RUN_TRAIN_N': True, 'PREV_TIMESTEP': 'strided'})
    # None leaves the choice to forward_test; RUN_TRAIN_N is the solver's, not the sampler's
    assert kwargs == {'sampler': 'euler', 'sample_steps': 4, 'guide_scale': 2.0, 'prev_timestep': 'strided'}


def test_an_unknown_key_names_itself_and_the_closest_one():
    from scepter_core.config import Config
    cfg = Config({'SOLVER': {'SAMPLE_ARGS': {'SAMPLE_STPES': 4}}})
    with pytest.raises(ConfigError, match=r"'SOLVER\.SAMPLE_ARGS\.SAMPLE_STPES': unknown sampling argument\. "
                                          r"Did you mean 'SAMPLE_STEPS'"):
        sample_kwargs(cfg.SOLVER.SAMPLE_ARGS)


def test_infer_offers_every_declared_spelling():
    import typer
    from scepter_cli.main import app
    infer = typer.main.get_command(app).commands['infer']
    options = {p.name: set(p.opts) for p in infer.params}
    for arg in ARGS:
        if arg.flags:  # the CLI reads the value back by the forward_test keyword's name
            assert set(arg.flags) <= options.get(arg.kwarg, set()), arg.key
    assert {'--sample_steps', '--guide_scale', '--n_prompt'} <= set().union(*options.values())  # Scepter's
    assert BY_KEY['SAMPLE_STEPS'].flags[0] == '--steps'

"""The solver's training loop: it trains with or without BackwardHook, ACCU_STEP, RESCALE_LR,
FREEZE / TRAIN_MODULES, MAX_EPOCHS; BackwardHook's block reaches the step."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from scepter_core.errors import ConfigError
from tests.solvers.tiny_net import train_tiny, weights


def test_a_recipe_without_backward_hook_trains_as_with_its_defaults(tmp_path: Path):
    bare = train_tiny(tmp_path / 'bare', 4)
    named = train_tiny(tmp_path / 'named', 4, [{'NAME': 'BackwardHook'}])
    init = train_tiny(tmp_path / 'init', 0)  # same seed: the weights before any step
    assert bare.step == 4 and bare.state.total_iter == 4
    w0, wb, wn = weights(init), weights(bare), weights(named)
    assert all(not torch.equal(wb[k], w0[k]) for k in w0)
    assert all(torch.equal(wb[k], wn[k]) for k in w0)  # same math, same process: bitwise


def test_accumulation_in_the_solver_equals_the_large_batch(tmp_path: Path):
    # the sampler's stream does not depend on the batch size: 2 x 4 samples == 8 samples
    acc = train_tiny(tmp_path / 'acc', 3, ACCU_STEP=2, MODEL={'NAME': 'TinyNet', 'NOISE': 0.0})
    big = train_tiny(tmp_path / 'big', 3, MODEL={'NAME': 'TinyNet', 'NOISE': 0.0},
                     TRAIN_DATA={'NAME': 'ShapesDataset', 'IMAGE_SIZE': 16, 'NUM_SAMPLES': 32, 'BATCH_SIZE': 8,
                                 'TRANSFORMS': acc.cfg.TRAIN_DATA.TRANSFORMS})
    assert acc.state.total_iter == 6 and big.state.total_iter == 3
    wa, wb = weights(acc), weights(big)
    for k in wa:  # fp32 sums in another order: ~1e-7 relative per step
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)


def test_backward_hook_settings_reach_the_step(tmp_path: Path):
    clipped = train_tiny(tmp_path / 'c', 2, [{'NAME': 'BackwardHook', 'GRADIENT_CLIP': 1e-4, 'ACCUMULATE_STEP': 2}])
    assert clipped.step_settings.gradient_clip == 1e-4 and clipped.state.total_iter == 4
    assert clipped.state.log_values['grad_norm'] > 1e-4
    off = train_tiny(tmp_path / 'off', 1, [{'NAME': 'BackwardHook', 'GRADIENT_CLIP': -1}])  # Scepter's "off"
    assert off.step_settings.gradient_clip is None and 'grad_norm' not in off.state.log_values


def test_two_accumulation_settings_that_disagree_are_an_error(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"'SOLVER.ACCU_STEP' \(2\) and BackwardHook's 'ACCUMULATE_STEP' \(3\)"):
        train_tiny(tmp_path, 1, [{'NAME': 'BackwardHook', 'ACCUMULATE_STEP': 3}], ACCU_STEP=2)


def test_rescale_lr_multiplies_by_world_batch_and_accumulation(tmp_path: Path):
    solver = train_tiny(tmp_path, 1, RESCALE_LR=True, ACCU_STEP=2, OPTIMIZER={'NAME': 'SGD', 'LEARNING_RATE': 0.01})
    assert solver.optimizer.param_groups[0]['lr'] == pytest.approx(0.01 * 1 * 4 * 2)
    plain = train_tiny(tmp_path / 'plain', 1, OPTIMIZER={'NAME': 'SGD', 'LEARNING_RATE': 0.01})
    assert plain.optimizer.param_groups[0]['lr'] == pytest.approx(0.01)


@pytest.mark.parametrize('key, value, frozen', [('FREEZE', ['body'], 'body.'), ('TRAIN_MODULES', ['body'], 'head.')])
def test_frozen_weights_stay_bit_identical(tmp_path: Path, key: str, value: list, frozen: str):
    init = weights(train_tiny(tmp_path / 'init', 0))
    solver = train_tiny(tmp_path / 'run', 3, **{key: value})
    after = weights(solver)
    in_optimizer = {id(p) for g in solver.optimizer.param_groups for p in g['params']}
    for name, p in solver.unwrapped_model.named_parameters():
        if name.startswith(frozen):
            assert torch.equal(after[name], init[name]) and id(p) not in in_optimizer, name
        else:
            assert not torch.equal(after[name], init[name]), name


def test_max_epochs_counts_optimizer_steps(tmp_path: Path):
    solver = train_tiny(tmp_path, 100, MAX_EPOCHS=1, ACCU_STEP=2)  # 32 samples / (4 x 2)
    assert solver.state.max_steps == 4 and solver.step == 4 and solver.state.total_iter == 8

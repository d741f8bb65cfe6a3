"""TrainStep on its own: accumulation, clipping, the fp16 scaler, the LR step and the
non-finite loss policy, on TinyNet with hand-made batches."""
from __future__ import annotations

import copy

import pytest
import torch

from scepter_core.errors import ScepterError
from scepter_core.hooks.base import LoopState
from scepter_core.solvers.step import StepSettings, TrainStep
from tests.solvers.tiny_net import TinyNet


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _stepper(model: torch.nn.Module, lr: float = 0.5, scheduler: bool = False, **settings) -> TrainStep:
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1)) if scheduler else None
    return TrainStep(model, opt, StepSettings(**settings), parameters=list(model.parameters()), lr_scheduler=sched)


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def test_accumulated_micro_batches_equal_the_large_batch():
    torch.manual_seed(0)
    big_model = TinyNet({'NOISE': 0.0})
    acc_model = copy.deepcopy(big_model)
    start = _params(big_model)
    big, acc = _stepper(big_model), _stepper(acc_model, accu_step=2)
    s_big, s_acc = LoopState(), LoopState()
    for i in range(3):
        x = _images(8, i)
        big({'image': x}, s_big)
        acc({'image': x[:4]}, s_acc)
        assert not s_acc.is_step_end and s_acc.step == i
        acc({'image': x[4:]}, s_acc)
        assert s_acc.is_step_end and s_acc.step == s_big.step == i + 1
    assert s_acc.total_iter == 6 and s_big.total_iter == 3
    for k, v in _params(acc_model).items():
        assert not torch.equal(v, start[k]), k  # trained
        # one mean over 8 vs two means over 4: rounding differs at fp32 epsilon per step
        torch.testing.assert_close(v, _params(big_model)[k], rtol=1e-5, atol=1e-6)
    assert all(p.grad is None for p in acc_model.parameters())  # zeroed after each step


def test_lr_schedule_steps_once_per_optimizer_step():
    model = TinyNet()
    step, state = _stepper(model, scheduler=True, accu_step=2), LoopState()
    for i in range(4):
        step({'image': _images(4, i)}, state)
    assert step.lr_scheduler.last_epoch == 2
    assert step.optimizer.param_groups[0]['lr'] == pytest.approx(0.5 / 3)


def test_clipping_limits_the_update_and_logs_the_true_norm():
    torch.manual_seed(0)
    model = TinyNet({'NOISE': 0.0})
    ref = copy.deepcopy(model)
    x = _images(4, 0)
    ref.forward_train(x)['loss'].backward()
    true_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in ref.parameters()]))
    clip, lr = 1e-3, 0.5
    assert true_norm > 10 * clip  # so the clip is active
    before, state = _params(model), LoopState()
    _stepper(model, lr=lr, gradient_clip=clip)({'image': x}, state)
    assert state.log_values['grad_norm'] == pytest.approx(float(true_norm), rel=1e-5)
    moved = torch.linalg.vector_norm(torch.stack([(v - before[k]).norm() for k, v in _params(model).items()]))
    assert float(moved) / lr == pytest.approx(clip, rel=1e-4)  # clip_grad_norm_ divides by norm + 1e-6


def test_non_finite_losses_are_skipped_counted_and_then_stop_training():
    model = TinyNet({'NAN_CALLS': [2, 4, 5, 6]})
    step, state = _stepper(model, max_nonfinite_steps=3), LoopState()
    step({'image': _images(4, 1)}, state)
    after_one = _params(model)
    step({'image': _images(4, 2)}, state)  # NaN: dropped
    assert state.step == 2 and state.nonfinite_in_row == 1 and state.skipped_steps == 1
    assert state.log_values['skipped_steps'] == 1
    assert all(torch.equal(v, after_one[k]) for k, v in _params(model).items())
    assert all(p.grad is None for p in model.parameters())  # nothing of the NaN step is left behind
    step({'image': _images(4, 3)}, state)
    assert state.nonfinite_in_row == 0 and all(p.isfinite().all() for p in model.parameters())
    step({'image': _images(4, 4)}, state)
    step({'image': _images(4, 5)}, state)
    state.last_checkpoint = '/runs/x/checkpoints/step-000003'
    with pytest.raises(ScepterError, match=r'training stopped at step 6: 3 non-finite losses in a row .*'
                                           r'last good checkpoint: /runs/x/checkpoints/step-000003'):
        step({'image': _images(4, 6)}, state)
    assert state.skipped_steps == 4


def test_a_non_finite_micro_batch_drops_its_whole_accumulated_step():
    model = TinyNet({'NAN_CALLS': [1]})
    step, state = _stepper(model, accu_step=2), LoopState()
    before = _params(model)
    step({'image': _images(4, 1)}, state)  # NaN
    step({'image': _images(4, 2)}, state)  # finite, but the step it belongs to is dropped
    assert state.step == 1 and state.skipped_steps == 1
    assert all(torch.equal(v, before[k]) for k, v in _params(model).items())


def test_fp16_scaler_unscales_before_the_update_and_skips_overflowing_steps():
    torch.manual_seed(0)
    plain_model = TinyNet({'NOISE': 0.0})
    scaled_model, overflow_model = copy.deepcopy(plain_model), copy.deepcopy(plain_model)
    start = _params(plain_model)

    def fp16() -> torch.autocast:
        return torch.autocast('cpu', dtype=torch.float16)

    def run(model: torch.nn.Module, scaler: torch.amp.GradScaler | None) -> LoopState:
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        step = TrainStep(model, opt, StepSettings(gradient_clip=100.0), parameters=list(model.parameters()),
                         scaler=scaler, autocast=fp16)
        state = LoopState()
        step({'image': _images(4, 0)}, state)
        return state

    run(plain_model, None)
    s = run(scaled_model, torch.amp.GradScaler('cpu', init_scale=2.0 ** 6))
    for k, v in _params(scaled_model).items():
        assert not torch.equal(v, start[k])
        # fp16 backward: a power-of-two scale only changes which tiny gradients underflow
        torch.testing.assert_close(v, _params(plain_model)[k], rtol=1e-3, atol=1e-5)
    assert s.log_values['grad_norm'] < 100  # the norm of the unscaled gradients
    scaler = torch.amp.GradScaler('cpu', init_scale=2.0 ** 30)  # fp16 gradients overflow
    run(overflow_model, scaler)
    assert all(torch.equal(v, start[k]) for k, v in _params(overflow_model).items())
    assert scaler.get_scale() == 2.0 ** 29


def test_a_loss_without_gradient_is_a_clear_error():
    model = TinyNet()
    model.requires_grad_(False)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    step = TrainStep(model, opt, StepSettings(), parameters=[])
    with pytest.raises(ScepterError, match="loss has no gradient: nothing trains"):
        step({'image': _images(4, 0)}, LoopState())

"""LeanAdamW / LeanAdam: bit-identical to torch's fused optimizers, on and off the lean path."""
from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from scepter_core.optim.lean_adam import LeanAdam, LeanAdamW
from scepter_core.registry import OPTIMIZERS


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: range, drop: int | None = None) -> None:
    for i in steps:
        x = torch.Generator().manual_seed(i)
        opt.zero_grad(set_to_none=True)
        model(torch.randn(4, 5, generator=x)).pow(2).mean().backward()
        if i == drop:  # a parameter without a grad this step: its counter falls behind
            model[2].bias.grad = None
        opt.step()


def _same(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize('lean_cls,torch_cls,groups', [
    (LeanAdamW, torch.optim.AdamW, False), (LeanAdam, torch.optim.Adam, False), (LeanAdamW, torch.optim.AdamW, True)])
def test_matches_torch_fused_bit_for_bit(lean_cls, torch_cls, groups):
    a, b = _net(), _net()

    def params(m):
        return [{'params': m[0].parameters()}, {'params': m[2].parameters(), 'lr': 3e-2}] if groups else m.parameters()
    lean = lean_cls(params(a), lr=1e-2, weight_decay=0.05, fused=True)
    ref = torch_cls(params(b), lr=1e-2, weight_decay=0.05, fused=True)
    _train(a, lean, range(4))
    _train(b, ref, range(4))
    assert lean._lean is not None  # the lean path ran
    assert _same(a, b)
    for g in lean.param_groups:  # one counter per group, counting every step
        steps = {id(lean.state[p]['step']) for p in g['params']}
        assert len(steps) == 1 and lean.state[g['params'][0]]['step'].item() == 4


def test_a_missing_grad_falls_back_to_torch_counts():
    a, b = _net(), _net()
    lean, ref = LeanAdamW(a.parameters(), lr=1e-2, fused=True), torch.optim.AdamW(b.parameters(), lr=1e-2, fused=True)
    _train(a, lean, range(6), drop=2)
    _train(b, ref, range(6), drop=2)
    assert _same(a, b)
    counts = [lean.state[p]['step'].item() for p in a.parameters()]
    assert counts == [ref.state[p]['step'].item() for p in b.parameters()] == [6, 6, 6, 5]
    assert lean._off and lean._lean is None


def test_state_dict_round_trip_with_torch():
    """A lean checkpoint resumes in torch's optimizer, and torch's in the lean one."""
    a, b = _net(), _net()
    lean = LeanAdamW(a.parameters(), lr=1e-2, fused=True)
    _train(a, lean, range(3))
    buf = io.BytesIO()
    torch.save(lean.state_dict(), buf)
    b.load_state_dict(a.state_dict())
    ref = torch.optim.AdamW(b.parameters(), lr=1e-2, fused=True)
    buf.seek(0)
    ref.load_state_dict(torch.load(buf))
    c = _net()
    c.load_state_dict(b.state_dict())
    again = LeanAdamW(c.parameters(), lr=1e-2, fused=True)
    again.load_state_dict(copy.deepcopy(ref.state_dict()))  # equal counters: one again
    _train(a, lean, range(3, 6))
    _train(b, ref, range(3, 6))
    _train(c, again, range(3, 6))
    assert _same(a, b) and _same(a, c)
    assert again._lean is not None


def test_off_path_settings_take_torchs_step():
    a, b = _net(), _net()
    lean = LeanAdamW(a.parameters(), lr=1e-2, amsgrad=True)  # not fused, amsgrad
    ref = torch.optim.AdamW(b.parameters(), lr=1e-2, amsgrad=True)
    _train(a, lean, range(3))
    _train(b, ref, range(3))
    assert _same(a, b) and lean._lean is None


def test_grad_scaler_kwargs_use_torchs_step():
    a = _net()
    opt = LeanAdamW(a.parameters(), lr=1e-2, fused=True)
    _train(a, opt, range(2))
    opt.grad_scale, opt.found_inf = torch.tensor(1.0), torch.tensor(0.0)  # as GradScaler sets them
    _train(a, opt, range(2, 3))
    assert opt._lean is None and all(opt.state[p]['step'].item() == 3 for p in a.parameters())


def test_registry_builds_the_lean_optimizers():
    params = list(_net().parameters())
    opt = OPTIMIZERS.build({'NAME': 'AdamW', 'LEARNING_RATE': 1e-3}, parameters=params)
    assert isinstance(opt, LeanAdamW) and isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]['fused']
    assert isinstance(OPTIMIZERS.build({'NAME': 'Adam'}, parameters=params), torch.optim.Adam)

"""torch's fused Adam / AdamW with less Python per step.

`torch.optim.AdamW(fused=True)` runs one kernel over all parameters, but around it rebuilds
its lists parameter by parameter and bumps one step counter per parameter (on the CPU a
per-tensor loop): ~1.2 ms of a 3.5 ms step on the tiny recipe's 286 tensors (bench/README.md).
`LeanAdamW` keeps the lists between steps and, while every parameter of a group has been
updated at every step, lets them share one step counter, so a step is one list of grads, one
increment and the kernel. The kernel, its arguments, the state layout and `state_dict()` are
torch's, so results match `torch.optim.AdamW(fused=True)` bit for bit and checkpoints move
between the two. Anything off that path (no fused kernel, amsgrad, maximize, capturable,
a GradScaler's scale, a closure, tensor learning rates, sharded or mixed-device parameters, a
parameter without a grad this step) takes torch's own step."""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

_OFF_PATH = ('amsgrad', 'maximize', 'capturable', 'differentiable')


class _Group:
    """The lists of one param group, and the step counter its parameters share."""

    def __init__(self, source: list, params: list[torch.Tensor], states: list[dict], step: torch.Tensor):
        self.source, self.params, self.step = source, params, step
        self.exp_avgs = [s['exp_avg'] for s in states]
        self.exp_avg_sqs = [s['exp_avg_sq'] for s in states]
        self.steps = [step] * len(params)


class LeanStepMixin:
    """Mixed before torch.optim.Adam / AdamW (see the module doc)."""

    _lean: dict[int, _Group] | None = None
    _shared = False  # some parameters share a step counter
    _off = False  # counters diverged (a parameter missed a step): torch's step from now on

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()  # type: ignore[misc]
        for state in sd['state'].values():  # one counter each, as torch's step expects on load
            if isinstance(state.get('step'), torch.Tensor):
                state['step'] = state['step'].clone()
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._lean, self._off = None, False
        super().load_state_dict(state_dict)  # type: ignore[misc]

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self._lean, self._off = None, False
        super().add_param_group(param_group)  # type: ignore[misc]

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        groups = self._lean_groups() if closure is None else None
        if groups is None:
            self._unshare()  # torch's step bumps each parameter's counter: one tensor each again
            return super().step(closure)  # type: ignore[misc]
        with torch.no_grad():
            for group, lean in zip(self.param_groups, groups):
                grads = [p.grad for p in lean.params]
                lean.step += 1
                kernel = torch._fused_adamw_ if group['decoupled_weight_decay'] else torch._fused_adam_
                beta1, beta2 = group['betas']
                kernel(lean.params, grads, lean.exp_avgs, lean.exp_avg_sqs, [], lean.steps,
                       amsgrad=False, lr=group['lr'], beta1=float(beta1), beta2=float(beta2),
                       weight_decay=group['weight_decay'], eps=group['eps'], maximize=False)
        return None

    def _lean_groups(self) -> list[_Group] | None:
        """The cached groups, when this step can take the lean path; else None."""
        if self._off or getattr(self, 'grad_scale', None) is not None or getattr(self, 'found_inf', None) is not None:
            return None
        cache = self._lean if self._lean is not None else {}
        out = []
        for i, group in enumerate(self.param_groups):
            lean = cache.get(i)
            if lean is None or lean.source is not group['params'] or len(lean.params) != len(group['params']):
                lean = self._build(group)
                if lean is None:
                    return None
                cache[i] = lean
            if any(p.grad is None for p in lean.params) or not all(
                    self.state[p].get('step') is lean.step for p in lean.params):
                return None
            out.append(lean)
        self._lean = cache
        return out

    def _unshare(self) -> None:
        self._lean = None
        if not self._shared:
            return
        self._shared = False
        for state in self.state.values():
            if isinstance(state.get('step'), torch.Tensor):
                state['step'] = state['step'].clone()

    def _build(self, group: dict[str, Any]) -> _Group | None:
        params = list(group['params'])
        if (not params or not group.get('fused') or any(group.get(k) for k in _OFF_PATH)
                or any(isinstance(group[k], torch.Tensor) for k in ('lr', 'weight_decay', 'eps'))
                or any(isinstance(b, torch.Tensor) for b in group['betas'])):
            return None
        first = params[0]
        for p in params:
            if (type(p) not in (nn.Parameter, torch.Tensor) or p.grad is None or p.grad.is_sparse
                    or p.device != first.device or p.dtype != first.dtype or torch.is_complex(p)):
                return None
        states = [self.state[p] for p in params]
        if all(states):
            steps = [s['step'] for s in states]
            step = steps[0]
            if any(s is not step for s in steps):
                # Counters that agree (loaded from a checkpoint, or torch's step ran) can be one.
                if not all(bool(s == step) for s in steps):
                    self._off = True
                    return None
                step = step.clone()
        elif not any(states):  # first step: torch's initial state, one counter for all
            step = torch.zeros((), dtype=torch.float32, device=first.device)
            for p, s in zip(params, states):
                s['exp_avg'] = torch.zeros_like(p, memory_format=torch.preserve_format)
                s['exp_avg_sq'] = torch.zeros_like(p, memory_format=torch.preserve_format)
        else:
            return None
        for s in states:
            s['step'] = step
        self._shared = True
        return _Group(group['params'], params, states, step)


class LeanAdamW(LeanStepMixin, torch.optim.AdamW):
    """torch.optim.AdamW with the lean fused step (module doc)."""


class LeanAdam(LeanStepMixin, torch.optim.Adam):
    """torch.optim.Adam with the lean fused step (module doc)."""

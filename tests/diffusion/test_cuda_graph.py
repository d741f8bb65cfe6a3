"""cuda_graph=True: replays on CUDA (checked on a GPU by bench/gpu.py); everywhere else it
must sample exactly as eager does and say once why it did not capture."""
from __future__ import annotations

import logging

import pytest
import torch

from scepter_core.diffusion.cuda_graph import GraphedCall, maybe_graphed
from scepter_core.accel.switches import cast_parameters


def test_cpu_sampling_with_cuda_graph_matches_eager(make_diffusion, model_fn, caplog):
    diffusion = make_diffusion()
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    kwargs = [{'cond': torch.ones(2, 3)}, {'cond': torch.zeros(2, 3)}]
    eager = diffusion.sample(noise, model_fn, kwargs, solver='ddim', steps=6, guide_scale=5.0, seed=1)
    with caplog.at_level(logging.INFO, logger='scepter'):
        graphed = diffusion.sample(noise, model_fn, kwargs, solver='ddim', steps=6, guide_scale=5.0, seed=1,
                                   cuda_graph=True)
    assert torch.equal(eager, graphed)
    assert any('cuda_graph: only on CUDA' in r.getMessage() for r in caplog.records)


def test_maybe_graphed_leaves_the_model_alone_when_off_or_on_cpu():
    fn = lambda x: x * 2  # noqa: E731
    assert maybe_graphed(fn, False, 'cuda') is fn
    assert maybe_graphed(fn, True, 'cpu') is fn


def test_graphed_call_runs_cpu_and_grad_inputs_eagerly():
    calls = []

    def fn(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        calls.append(x.shape)
        return x * scale
    graphed = GraphedCall(fn)
    x = torch.randn(3, requires_grad=True)
    assert torch.equal(graphed(x.detach(), scale=2.0), x.detach() * 2)
    graphed(x).sum().backward()  # autograd still flows: nothing was captured
    assert torch.equal(x.grad, torch.ones(3))
    assert graphed.graphs == {} and graphed.replays == 0 and len(calls) == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_graphed_call_replays_on_cuda():
    lin = torch.nn.Linear(16, 16).cuda().requires_grad_(False)
    graphed = GraphedCall(lambda x, cond: lin(x) + cond)
    with torch.inference_mode():
        for seed in range(3):
            x = torch.randn(4, 16, device='cuda', generator=torch.Generator('cuda').manual_seed(seed))
            c = torch.full((4, 16), float(seed), device='cuda')
            assert torch.allclose(graphed(x, cond=c), lin(x) + c)
    assert len(graphed.graphs) == 1 and graphed.replays == 3


def test_cast_parameters_keeps_buffers():
    model = torch.nn.BatchNorm1d(4)
    cast_parameters(model, torch.bfloat16)
    assert model.weight.dtype == torch.bfloat16 and isinstance(model.weight, torch.nn.Parameter)
    assert model.running_mean.dtype == torch.float32 and model.num_batches_tracked.dtype == torch.int64

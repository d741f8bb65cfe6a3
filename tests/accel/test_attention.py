"""CPU attention (accel/attention.py): short sequences as matmuls, half precision in fp32, and
small fp32 training as one Function: the same numbers and gradients as the stock module path."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from scepter_core.accel import attention as att
from scepter_core.accel import gemm
from scepter_core.accel.layers import SWAPS, swap_classes
from scepter_core.models.backbones.attention import CrossAttention

pytestmark = pytest.mark.usefixtures('one_thread')


@pytest.mark.parametrize('lengths', [(16, 16), (64, 77), (200, 200)])
def test_cpu_attention_matches_sdpa(lengths):
    """Short sequences take the two-matmul path on the CPU, long ones the flash kernel: same numbers."""
    torch.manual_seed(0)
    lq, lk = lengths
    q, k, v = (torch.randn(2, 3, n, 16, requires_grad=True) for n in (lq, lk, lk))
    out = att.cpu_attention(q, k, v)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
    ref_grads = torch.autograd.grad(ref.square().sum(), (q, k, v))
    assert (lq * lk <= att.CPU_MATH_PAIRS) == (lengths != (200, 200))
    assert (out.double() - ref).abs().max() < 1e-5
    for g, r in zip(grads, ref_grads):
        assert (g - r).abs().max() < 1e-4
    with torch.autocast('cpu', dtype=torch.bfloat16):
        half = att.cpu_attention(q.bfloat16(), k.bfloat16(), v.bfloat16())
    assert half.dtype == torch.bfloat16 and (half.double() - ref).abs().max() < 0.05


@pytest.mark.parametrize('context_dim', [None, 24])
def test_fused_attention_matches_the_stock_module(monkeypatch, context_dim):
    """A swapped CrossAttention in small fp32 CPU training runs as one Function: the same
    output and gradients as autograd through the stock module, on the same parameters."""
    monkeypatch.setenv(gemm.ENV, 'onednn')
    torch.manual_seed(0)
    layer = CrossAttention(32, context_dim, heads=2, dim_head=16)
    x = torch.randn(3, 10, 32, requires_grad=True)
    ctx = torch.randn(3, 7, context_dim, requires_grad=True) if context_dim else None
    leaves = [x] + ([ctx] if ctx is not None else []) + list(layer.parameters())
    runs = []
    for fused in (False, True):
        if fused:
            swap_classes(layer, SWAPS)
            swap_classes(layer, att.ATTENTION_SWAPS)
            assert type(layer) is att.FusedCrossAttention
            assert att.fused_attention_applies(layer, x, x if ctx is None else ctx)
        out = layer(x, ctx)
        grads = torch.autograd.grad((out * torch.linspace(-1, 1, 32)).sum(), leaves)
        runs.append((out.detach(), grads))
    (out_m, grads_m), (out_f, grads_f) = runs
    assert (out_f - out_m).abs().max() < 1e-5
    for a, b in zip(grads_f, grads_m):
        assert (a - b).abs().max() < 1e-5 * max(1.0, b.abs().max().item())
    with torch.no_grad():  # inference keeps the module path
        assert not att.fused_attention_applies(layer, x, x)
    monkeypatch.setenv(gemm.ENV, 'aten')  # a CPU where oneDNN is no faster: the module path
    assert not att.fused_attention_applies(layer, x, x if ctx is None else ctx)
    monkeypatch.setenv(gemm.ENV, 'onednn')
    layer.to_k = torch.nn.Linear(layer.to_k.in_features, layer.to_k.out_features, bias=False)  # a wrapped layer
    assert not att.fused_attention_applies(layer, x, x if ctx is None else ctx)

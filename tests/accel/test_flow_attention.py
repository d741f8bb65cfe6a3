"""The accel attention table covers the flow transformers: `accel.apply` gives FLUX's double /
single blocks and SD3's joint blocks (and MMDiT-X's self-attention) the CPU attention; outputs
and gradients equal the stock blocks' (short sequences take the math path, long ones SDPA)."""
from __future__ import annotations

import copy

import pytest
import torch

from scepter_core import accel
from scepter_core.accel.attention import (CpuDismantledBlock, CpuDoubleStreamBlock, CpuJointBlock,
                                          CpuSingleStreamBlock)
from scepter_core.registry import BACKBONES

FLUX = {'NAME': 'Flux', 'IN_CHANNELS': 16, 'HIDDEN_SIZE': 32, 'NUM_HEADS': 2, 'AXES_DIM': [4, 6, 6],
        'VEC_IN_DIM': 24, 'CONTEXT_IN_DIM': 16, 'DEPTH': 1, 'DEPTH_SINGLE_BLOCKS': 1, 'GUIDANCE_EMBED': True}
MMDIT = {'NAME': 'MMDiT', 'IN_CHANNELS': 4, 'OUT_CHANNELS': 4, 'DEPTH': 2, 'HIDDEN_SIZE': 16, 'NUM_HEADS': 2,
         'ADM_IN_CHANNELS': 10, 'CONTEXT_EMBEDDER_CONFIG': {'params': {'in_features': 12}}, 'QK_NORM': 'rms',
         'X_BLOCK_SELF_ATTN_LAYERS': [0], 'POS_EMBED_MAX_SIZE': 32, 'POS_EMBED_BASE_SIZE': 8}
CASES = {'flux': (FLUX, 4, 16, 24, {CpuDoubleStreamBlock, CpuSingleStreamBlock}),
         'mmdit': (MMDIT, 4, 12, 10, {CpuJointBlock, CpuDismantledBlock})}


@pytest.mark.parametrize('side', [8, 48], ids=['short', 'long'])  # 16 + 5 and 576 + 5 tokens
@pytest.mark.parametrize('case', list(CASES))
def test_swapped_flow_blocks_give_the_stock_outputs_and_gradients(case, side):
    block, channels, context, pooled, swapped = CASES[case]
    torch.manual_seed(0)
    stock = BACKBONES.build(block)
    fast = accel.apply(copy.deepcopy(stock), 'train')
    assert {type(m) for m in fast.modules()} >= swapped
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, channels, side, side, generator=g)
    cond = {'crossattn': torch.randn(2, 5, context, generator=g), 'y': torch.randn(2, pooled, generator=g),
            'guidance': torch.tensor([3.5, 3.5])}
    outs = []
    for model in (stock, fast):
        out = model(x, torch.tensor([700.0, 200.0]), cond)
        out.square().mean().backward()
        outs.append((out.detach(), {n: p.grad for n, p in model.named_parameters()}))
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-5, atol=1e-5)
    for name, grad in outs[0][1].items():
        torch.testing.assert_close(outs[1][1][name], grad, rtol=1e-4, atol=5e-5, msg=name)

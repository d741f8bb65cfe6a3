"""Block-wise CPU offload of the flow transformers (OFFLOAD_BLOCKS): each block's frozen weights
are copied to the compute device for its call only (one block's copy alive at a time) and the
outputs, and a LoRA's gradients under gradient checkpointing, equal those without offload. On
this CPU-only machine the compute device is the CPU: the copies are still made and dropped."""
from __future__ import annotations

import pytest
import torch
from models.tiny_flow import TINY_FLUX
from torch import nn

from scepter_core.registry import BACKBONES
from scepter_core.tuners import apply_tuners

MMDIT = {'NAME': 'MMDiT', 'IN_CHANNELS': 4, 'OUT_CHANNELS': 4, 'DEPTH': 3, 'HIDDEN_SIZE': 16, 'NUM_HEADS': 2,
         'ADM_IN_CHANNELS': 10, 'CONTEXT_EMBEDDER_CONFIG': {'params': {'in_features': 12}}, 'QK_NORM': 'rms',
         'X_BLOCK_SELF_ATTN_LAYERS': [0], 'POS_EMBED_MAX_SIZE': 12, 'POS_EMBED_BASE_SIZE': 8}
CASES = {'flux': (TINY_FLUX, (4, 16, 24), r'model\..*blocks\.\d+\..*(qkv|linear1|linear2|proj)$'),
         'mmdit': (MMDIT, (4, 12, 10), r'model\.joint_blocks\.\d+\..*(qkv|fc1|fc2)$')}


class Net(nn.Module):
    def __init__(self, block: dict, **switches):
        super().__init__()
        torch.manual_seed(0)
        self.model = BACKBONES.build({**block, **switches})
        with torch.no_grad():  # away from the zero-initialised layers
            for p in self.model.parameters():
                p.normal_(0, 0.2)


def inputs(channels: int, context: int, pooled: int) -> tuple:
    g = torch.Generator().manual_seed(1)
    cond = {'crossattn': torch.randn(2, 5, context, generator=g), 'y': torch.randn(2, pooled, generator=g),
            'guidance': torch.tensor([3.5, 3.5])}
    return torch.randn(2, channels, 8, 8, generator=g), torch.tensor([700.0, 200.0]), cond


def blocks(backbone: nn.Module) -> list[nn.Module]:
    return [*getattr(backbone, 'double_blocks', []), *getattr(backbone, 'single_blocks', []),
            *getattr(backbone, 'joint_blocks', [])]


@pytest.mark.parametrize('case', list(CASES))
def test_offloaded_blocks_give_the_same_output_one_block_on_the_device_at_a_time(case):
    block, (channels, context, pooled), _ = CASES[case]
    plain, offloaded = (Net(block, **s).model.eval().requires_grad_(False) for s in ({}, {'OFFLOAD_BLOCKS': True}))
    seen = []

    def probe(module, _args):
        offload = offloaded.offload
        # the running block computes on fresh copies; every other block holds only its CPU store
        live = [b for b in blocks(offloaded)
                if any(m._parameters[n] is not t for m, n, is_param, t in offload.stores[id(b)] if is_param)]
        seen.append((live, module))
    for b in blocks(offloaded):
        b.register_forward_pre_hook(probe)
    with torch.no_grad():
        expected, out = plain(*inputs(channels, context, pooled)), offloaded(*inputs(channels, context, pooled))
    assert torch.equal(out, expected)
    assert offloaded.offload.fetches == len(blocks(offloaded)) == len(seen)
    assert all(offloaded.offload.stores[id(b)] for b in blocks(offloaded))
    assert all(live == [module] for live, module in seen)
    assert all(m._parameters[n] is t for b in blocks(offloaded) for m, n, p, t in offloaded.offload.stores[id(b)] if p)
    assert all(t.device.type == 'cpu' for s in offloaded.offload.stores.values() for *_, t in s)


@pytest.mark.parametrize('case', list(CASES))
def test_lora_gradients_through_offloaded_checkpointed_blocks_equal_the_plain_ones(case):
    block, (channels, context, pooled), targets = CASES[case]
    ckpt = 'USE_GRAD_CHECKPOINT' if case == 'flux' else 'USE_CHECKPOINT'
    grads = []
    for switches in ({}, {'OFFLOAD_BLOCKS': True, ckpt: True}):
        net = apply_tuners(Net(block, **switches), [{'NAME': 'SwiftLoRA', 'R': 2, 'LORA_ALPHA': 2,
                                                     'TARGET_MODULES': targets}])
        with torch.no_grad():
            for n, p in net.named_parameters():
                if 'lora_B' in n:
                    p.normal_(0, 0.1, generator=torch.Generator().manual_seed(len(n)))
        net.train()
        net.model(*inputs(channels, context, pooled)).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in net.named_parameters() if p.requires_grad})
        if switches:  # the recomputation fetched every block again; adapters never left the device
            offload = net.model.offload
            assert offload.fetches == 2 * len(blocks(net.model))
            stored = {id(t) for s in offload.stores.values() for *_, t in s}
            assert not any(id(p) in stored for n, p in net.named_parameters() if 'lora_' in n)
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=0, atol=0, msg=name)


@pytest.mark.timeout(300)
def test_lora_step_on_an_int8_base_with_offloaded_checkpointed_blocks():
    """Both memory switches at once: the frozen base in int8 (torchao) and its blocks offloaded.
    The adapters' gradients equal those of the int8 base without offload, AdamW moves them, and
    every block's base weights stay int8 in the CPU stores after the step."""
    from scepter_core.models.quantize import quantize_frozen
    from scepter_core.registry import OPTIMIZERS
    block, (channels, context, pooled), targets = CASES['flux']
    grads = []
    for switches in ({'USE_GRAD_CHECKPOINT': True}, {'USE_GRAD_CHECKPOINT': True, 'OFFLOAD_BLOCKS': True}):
        net = Net(block, **switches).requires_grad_(False)
        assert quantize_frozen(net, 'int8').layers > 0
        net = apply_tuners(net, [{'NAME': 'SwiftLoRA', 'R': 2, 'LORA_ALPHA': 2, 'TARGET_MODULES': targets}])
        with torch.no_grad():
            for n, p in net.named_parameters():
                if 'lora_B' in n:
                    p.normal_(0, 0.1, generator=torch.Generator().manual_seed(len(n)))
        trained = {n: p for n, p in net.named_parameters() if p.requires_grad}
        assert trained and all('lora_' in n for n in trained)
        optimizer = OPTIMIZERS.build({'NAME': 'AdamW', 'LEARNING_RATE': 1e-2}, parameters=list(trained.values()))
        before = {n: p.detach().clone() for n, p in trained.items()}
        net.train()
        net.model(*inputs(channels, context, pooled)).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in trained.items()})
        optimizer.step()
        assert all(not torch.equal(before[n], p.detach()) for n, p in trained.items() if 'lora_B' in n)
    offload = net.model.offload
    assert offload.fetches == 2 * len(blocks(net.model))  # forward and recomputation, block by block
    stored = [t for b in blocks(net.model) for m, n, is_param, t in offload.stores[id(b)] if is_param]
    int8 = [t for t in stored if 'torchao' in type(t).__module__]
    assert int8 and all(t.device.type == 'cpu' and not t.requires_grad for t in int8)
    assert all(m._parameters[n] is t for b in blocks(net.model) for m, n, p, t in offload.stores[id(b)] if p)
    assert grads[0].keys() == grads[1].keys()
    for name, g in grads[0].items():  # the same int8 kernels on the same weights: equal on one thread
        assert torch.count_nonzero(g) > 0, name
        torch.testing.assert_close(grads[1][name], g, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize('case', list(CASES))
def test_moving_an_offloaded_model_converts_its_frozen_blocks_on_the_cpu_one_by_one(case):
    """`.to()` of a model with OFFLOAD_BLOCKS (the solver moves it to the device) leaves the
    blocks' frozen tensors on the CPU: they go through the conversion after the rest, one at a
    time (on a GPU: one block tensor on the device at once), and the model still computes."""
    block, (channels, context, pooled), _ = CASES[case]
    plain, offloaded = (Net(block, **s).model.eval().requires_grad_(False) for s in ({}, {'OFFLOAD_BLOCKS': True}))
    frozen = {id(t) for b in blocks(offloaded) for t in [*b.parameters(), *b.buffers()]}
    seen: list[bool] = []

    def convert(t: torch.Tensor) -> torch.Tensor:
        seen.append(id(t) in frozen)
        return t.to(torch.float64)
    offloaded._apply(convert)
    assert seen.count(True) == len(frozen) and seen[-len(frozen):] == [True] * len(frozen)
    assert all(t.dtype == torch.float64 and t.device.type == 'cpu' and not t.requires_grad
               for b in blocks(offloaded) for t in b.parameters())
    with torch.no_grad():
        expected = plain.to(torch.float64)(*inputs(channels, context, pooled))
        out = offloaded(*inputs(channels, context, pooled))
    assert torch.equal(out, expected) and offloaded.offload.fetches == len(blocks(offloaded))

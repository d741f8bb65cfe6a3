"""A frozen base held in int8 (torchao) under trainable LoRA adapters: a tiny FLUX LoRA
step on the CPU."""
from __future__ import annotations

import pytest
import torch

from scepter_core.errors import ConfigError
from scepter_core.models.backbones.flux import Flux
from scepter_core.models.quantize import quantize_frozen
from scepter_core.registry import OPTIMIZERS
from scepter_core.tuners import apply_tuners

TINY = dict(IN_CHANNELS=16, HIDDEN_SIZE=32, NUM_HEADS=2, AXES_DIM=[4, 6, 6], VEC_IN_DIM=24, CONTEXT_IN_DIM=20,
            DEPTH=1, DEPTH_SINGLE_BLOCKS=1, GUIDANCE_EMBED=True)
LORA = {'NAME': 'SwiftLoRA', 'R': 4, 'LORA_ALPHA': 4, 'TARGET_MODULES':
        r'(double_blocks.*(.qkv|.proj|.img_mod.lin|.txt_mod.lin))|(single_blocks.*(.linear1|.linear2|.modulation.lin))$'}


def _inputs():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(2, 4, 4, 4, generator=g), torch.tensor([700.0, 200.0]),
            {'crossattn': torch.randn(2, 3, 20, generator=g), 'y': torch.randn(2, 24, generator=g),
             'guidance': torch.tensor([3.5, 3.5])})


def test_int8_base_trains_lora_adapters_and_stays_int8():
    torch.manual_seed(0)
    model = Flux(TINY)
    x, t, cond = _inputs()
    with torch.no_grad():
        full = model(x, t, cond)
    model.requires_grad_(False)
    report = quantize_frozen(model, 'int8')
    assert report.layers > 10 and report.bytes_after < report.bytes_before / 3
    with torch.no_grad():
        quantized = model(x, t, cond)
    # int8 per-channel weights: close to the float model, not equal to it
    assert 0 < (quantized - full).abs().max() < 0.05 * full.abs().max()
    model = apply_tuners(model, [LORA])
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all('lora' in n for n, p in model.named_parameters() if p.requires_grad)
    optimizer = OPTIMIZERS.build({'NAME': 'AdamW', 'LEARNING_RATE': 1e-2}, parameters=trainable)
    base = model.get_base_model() if hasattr(model, 'get_base_model') else model
    qkv = base.double_blocks[0].img_attn.qkv
    before = qkv.base_layer.weight if hasattr(qkv, 'base_layer') else qkv.weight
    snapshot = [p.detach().clone() for p in trainable]
    loss = model(x, t, cond).square().mean()
    loss.backward()
    assert all(p.grad is not None for p in trainable)
    optimizer.step()
    assert any(not torch.equal(a, b.detach()) for a, b in zip(snapshot, trainable))
    weight = qkv.base_layer.weight if hasattr(qkv, 'base_layer') else qkv.weight
    assert weight is before and 'torchao' in type(weight).__module__ and not weight.requires_grad


def test_trained_layers_are_left_in_full_precision():
    model = Flux(TINY)
    model.requires_grad_(False)
    model.img_in.requires_grad_(True)
    quantize_frozen(model, 'int8')
    assert type(model.img_in.weight) is torch.nn.Parameter
    assert 'torchao' in type(model.txt_in.weight).__module__


def test_fp8_on_a_cpu_is_refused_with_the_alternative():
    model = Flux(TINY).requires_grad_(False)
    with pytest.raises(ConfigError, match='fp8.*int8'):
        quantize_frozen(model, 'fp8')


STEP_SCRIPT = """
import sys, torch
from scepter_core.registry import OPTIMIZERS
import scepter_core.optim  # noqa: F401
torch.manual_seed(0)
layer = torch.nn.Linear(256, 256)
optimizer = OPTIMIZERS.build({'NAME': sys.argv[1], 'LEARNING_RATE': 1e-2}, parameters=list(layer.parameters()))
x, y = torch.randn(8, 256), torch.randn(8, 256)
losses = []
for _ in range(5):
    optimizer.zero_grad()
    loss = (layer(x) - y).square().mean()
    loss.backward()
    optimizer.step()
    losses.append(loss.item())
print(losses[0], losses[-1])
"""


@pytest.mark.parametrize('name', ['AdamW8bit', 'Adafactor'])
def test_low_memory_optimizers_step(name):
    # A fresh interpreter: torchao's 8-bit step is torch.compile'd, and other tests change
    # inductor's global configuration while they probe compile support.
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, '-c', STEP_SCRIPT, name], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    first, last = (float(v) for v in proc.stdout.split()[-2:])
    assert last < first


def test_int8_weights_keep_their_own_kernels_when_onednn_takes_the_float_linears(monkeypatch):
    """CI picked oneDNN on an Intel Xeon and sent torchao's Int8Tensor (dtype float32) into oneDNN's
    fp32 op, which has no kernel for it: the int8 layers must keep torchao's dispatch while the
    float ones (the LoRA adapters) may take oneDNN."""
    from scepter_core.accel import apply, gemm
    monkeypatch.setattr(gemm, 'MIN_MACS', 0)
    monkeypatch.setattr(gemm, 'MIN_MACS_GRAD', 0)
    torch.manual_seed(0)
    model = Flux(TINY)
    model.requires_grad_(False)
    quantize_frozen(model, 'int8')
    model = apply(apply_tuners(model, [LORA]), 'train')
    x, t, cond = _inputs()
    outputs, grads = {}, {}
    for choice in ('aten', 'onednn'):
        monkeypatch.setenv(gemm.ENV, choice)
        model.zero_grad()
        out = model(x, t, cond)
        out.square().mean().backward()
        outputs[choice] = out.detach()
        grads[choice] = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    assert torch.allclose(outputs['onednn'], outputs['aten'], rtol=1e-4, atol=1e-5)
    assert all(torch.allclose(a, b, rtol=1e-3, atol=1e-6) for a, b in zip(grads['onednn'], grads['aten']))

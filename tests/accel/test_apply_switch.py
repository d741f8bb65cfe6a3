"""`accel.apply` (accel/paths.py): models are stock torch until it runs; SCEPTER_CPU_FAST_PATHS=0
keeps them stock with the same numbers; one log line says what runs; LoRA still works."""
from __future__ import annotations

import copy
import logging
import subprocess
import sys

import pytest
import torch
from e2e.conftest import TINY_MODEL
from models.tiny_sd import randomize
from torch import nn

from scepter_core import accel
from scepter_core.accel import gemm, layers, packing, paths
from scepter_core.accel.attention import ATTENTION_SWAPS
from scepter_core.accel.layers import SWAPS
from scepter_core.errors import ConfigError
from scepter_core.registry import MODELS

pytestmark = pytest.mark.usefixtures('one_thread')
LOG = logging.getLogger('test_accel')
FLOW_BLOCKS = {'CpuDoubleStreamBlock', 'CpuSingleStreamBlock', 'CpuJointBlock', 'CpuDismantledBlock'}  # not in SD
FAST = set(SWAPS.values()) | {c for c in ATTENTION_SWAPS.values() if c.__name__ not in FLOW_BLOCKS}
PROMPTS = ['a red circle', 'a blue square']


def tiny_ldm() -> nn.Module:
    torch.manual_seed(0)
    model = MODELS.build(copy.deepcopy(TINY_MODEL))
    return randomize(model, seed=1, std=0.05).train()


def classes(model: nn.Module) -> set[type]:
    return {type(m) for m in model.modules()}


@pytest.fixture
def onednn_everywhere(monkeypatch):
    """Fast paths on whatever this CPU's probe says, down to small products; oneDNN calls counted."""
    monkeypatch.setenv(gemm.ENV, 'onednn')
    monkeypatch.setattr(gemm, 'MIN_MACS', 0)  # training keeps MIN_MACS_GRAD: the fused attention applies
    calls, packed, real_onednn, real_pack = [], [], gemm.onednn, layers.Conv2d._packed_weight
    monkeypatch.setattr(gemm, 'onednn', lambda *a: calls.append(1) or real_onednn(*a))

    def pack(self, x):
        out = real_pack(self, x)
        packed.append(out is not None)
        return out
    monkeypatch.setattr(layers.Conv2d, '_packed_weight', pack)
    return calls, packed


def test_models_import_no_accel_module():
    code = ('import sys; import scepter_core.models.backbones.unet, scepter_core.models.networks.latent_diffusion, '
            'scepter_core.models.embedders.clip, scepter_core.diffusion.sampling; '
            "print(sorted(m for m in sys.modules if m.startswith('scepter_core.accel')))")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip() == '[]'


def test_off_switch_keeps_stock_layers_with_the_same_numbers(monkeypatch, onednn_everywhere):
    calls, packed = onednn_everywhere
    stock, fast = tiny_ldm(), tiny_ldm()
    keys = list(stock.state_dict())
    monkeypatch.setenv(accel.ENV, '0')
    accel.apply(stock, 'train', logger=LOG)
    assert not classes(stock) & FAST and nn.Linear in classes(stock) and nn.Conv2d in classes(stock)
    monkeypatch.delenv(accel.ENV)
    accel.apply(fast, 'train', logger=LOG)
    assert not classes(fast) & {nn.Linear, nn.Conv2d}  # every layer swapped, the CLIP encoder's too
    assert FAST <= classes(fast) and list(fast.state_dict()) == keys

    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1
    outs = []
    for model in (stock, fast):
        torch.manual_seed(5)
        loss = model.forward_train(image=images, prompt=list(PROMPTS))['loss']
        grads = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])
        with torch.no_grad():
            z = model.first_stage_model.encode(images)
            parts = [model.cond_stage_model.encode(PROMPTS), z, model.first_stage_model.decode(z),
                     model.model(z, torch.tensor([10, 500]), model.encode_prompts(PROMPTS))]
        samples = model.eval().forward_test(prompt=list(PROMPTS), sample_steps=3, seed=1, guide_scale=3.0)
        outs.append((loss.detach(), grads, parts, torch.stack([s['image'] for s in samples])))
    (loss_s, grads_s, parts_s, img_s), (loss_f, grads_f, parts_f, img_f) = outs
    assert calls and any(packed)  # oneDNN linears ran, and packed convolutions while sampling
    torch.testing.assert_close(loss_f, loss_s, rtol=1e-5, atol=1e-5)
    # Gradients go through a backward of oneDNN matmuls against MKL's: their rounding differs
    # by up to ~1.3e-5 on the Intel Xeon here (1e-5 held on the EPYC); outputs stay within 1e-5.
    for a, b in zip(grads_f, grads_s):
        assert (a - b).abs().max() <= 5e-5 * max(1.0, b.abs().max().item())
    for a, b in zip(parts_f, parts_s):
        assert a.is_contiguous() and (a - b).abs().max() <= 1e-5 * max(1.0, b.abs().max().item())
    assert img_f.is_contiguous() and (img_f - img_s).abs().max() <= 1e-5


def test_config_switch_and_a_model_off_the_cpu(monkeypatch):
    assert paths.disabled_reason({'CPU_FAST_PATHS': False}) == 'SOLVER.CPU_FAST_PATHS: false'
    assert paths.disabled_reason({'CPU_FAST_PATHS': True}) is None and paths.disabled_reason(None) is None
    model = nn.Sequential(nn.Linear(4, 4))
    accel.apply(model, 'infer', {'CPU_FAST_PATHS': False}, LOG)
    assert type(model[0]) is nn.Linear
    monkeypatch.setenv(accel.ENV, 'maybe')
    with pytest.raises(ConfigError, match='SCEPTER_CPU_FAST_PATHS'):
        accel.apply(model, 'infer', None, LOG)
    with pytest.raises(ValueError, match="mode 'test'"):
        accel.apply(model, 'test')


def test_one_log_line_names_the_paths(monkeypatch, caplog):
    monkeypatch.setattr(paths, '_LOGGED', set())
    monkeypatch.setenv(gemm.ENV, 'onednn')
    monkeypatch.setenv(packing.PACK_ENV, '0')
    with caplog.at_level(logging.INFO, logger=LOG.name):
        for _ in range(3):
            accel.apply(nn.Sequential(nn.Linear(4, 4), nn.Conv2d(3, 3, 1)), 'train', logger=LOG)
    lines = [r.getMessage() for r in caplog.records if 'cpu fast paths' in r.getMessage()]
    assert len(lines) == 1
    on, off = lines[0].split('; off: ')
    assert 'onednn linear' in on and 'SCEPTER_CPU_GEMM=onednn' in on and 'fused attention' in on
    assert 'packed conv weights (SCEPTER_CPU_PACK_LIMIT_MB=0)' in off
    monkeypatch.setenv(accel.ENV, '0')
    with caplog.at_level(logging.INFO, logger=LOG.name):
        accel.apply(nn.Linear(2, 2), 'infer', logger=LOG)
    assert caplog.records[-1].getMessage() == 'cpu fast paths: off (SCEPTER_CPU_FAST_PATHS=0)'


@pytest.mark.parametrize('lora_first', [False, True])
def test_lora_on_a_swapped_model(onednn_everywhere, lora_first):
    """peft wraps the swapped layers (or accel swaps the layers inside peft's wrappers): same
    keys, outputs and adapter gradients as LoRA on the stock model."""
    from peft.tuners.lora import LoraLayer
    from tuners.lora_helpers import lora_blocks, randomize_adapters

    from scepter_core.tuners import apply_tuners
    models = []
    for fast in (False, True):
        model = tiny_ldm()
        if fast and not lora_first:
            accel.apply(model, 'train', logger=LOG)
        apply_tuners(model, lora_blocks(), LOG)
        if fast and lora_first:
            accel.apply(model, 'train', logger=LOG)
        randomize_adapters(model, seed=2)
        models.append(model)
    stock, fast = models
    assert list(stock.state_dict()) == list(fast.state_dict())
    wrapped = [m for m in fast.modules() if isinstance(m, LoraLayer)]
    assert wrapped and all(type(m.base_layer) in (layers.Linear, layers.Conv2d) for m in wrapped)
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(4)) * 2 - 1
    grads = []
    for model in (stock, fast):
        torch.manual_seed(6)
        loss = model.forward_train(image=images, prompt=list(PROMPTS))['loss']
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        assert named and all('lora_' in n for n, _ in named)
        grads.append((loss.detach(), torch.autograd.grad(loss, [p for _, p in named])))
    (loss_s, grads_s), (loss_f, grads_f) = grads
    torch.testing.assert_close(loss_f, loss_s, rtol=1e-5, atol=1e-5)
    # Gradients go through a backward of oneDNN matmuls against MKL's: their rounding differs
    # by up to ~1.3e-5 on the Intel Xeon here (1e-5 held on the EPYC); outputs stay within 1e-5.
    for a, b in zip(grads_f, grads_s):
        assert (a - b).abs().max() <= 5e-5 * max(1.0, b.abs().max().item())

"""The oneDNN fast layers (accel/gemm.py, layers.py, packing.py): same numbers and gradients as
nn.Linear / nn.Conv2d, used only where they should be."""
from __future__ import annotations

import copy
import os
import subprocess
import sys
import threading

import pytest
import torch
from torch import nn

from scepter_core.accel import gemm, packing
from scepter_core.accel.gemm import linear
from scepter_core.accel.layers import SWAPS, Conv2d, Linear, swap_classes
from scepter_core.accel.packing import attach_layout_hooks, packed_weights, packs

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason='torch built without oneDNN')


@pytest.fixture
def forced(monkeypatch):
    """Force the oneDNN path for every size and count its calls."""
    monkeypatch.setenv(gemm.ENV, 'onednn')
    monkeypatch.setattr(gemm, 'MIN_MACS', 0)
    monkeypatch.setattr(gemm, 'MIN_MACS_GRAD', 0)
    calls = []
    real = gemm.onednn

    def spy(x, w, b):
        calls.append((tuple(x.shape), tuple(w.shape)))
        return real(x, w, b)
    monkeypatch.setattr(gemm, 'onednn', spy)
    return calls


@pytest.mark.parametrize('shape,bias,out', [((4, 7, 24), True, 40), ((33, 24), False, 40),
                                            ((2, 3, 5, 24), True, 8), ((6, 24), True, 24)])
def test_forward_and_gradients_match_float64(forced, shape, bias, out):
    torch.manual_seed(0)
    layer = Linear(shape[-1], out, bias=bias)
    x = torch.randn(*shape, requires_grad=True)
    y = layer(x)
    g = torch.randn_like(y)
    y.backward(g)
    # forward, grad of x, grad of W (a square weight's too: at the forced sizes all are "large")
    assert len(forced) == 3
    ref = layer.double()
    x64 = x.detach().double().requires_grad_()
    y64 = ref(x64)
    y64.backward(g.double())
    assert (y.double() - y64).abs().max() < 1e-5
    assert (x.grad.double() - x64.grad).abs().max() < 1e-5
    assert (layer.weight.grad - ref.weight.grad).abs().max() < 1e-4 * max(1.0, ref.weight.grad.abs().max())
    if bias:
        assert (layer.bias.grad - ref.bias.grad).abs().max() < 1e-4


def test_frozen_weight_and_noncontiguous_input(forced):
    torch.manual_seed(1)
    layer = Linear(16, 32).requires_grad_(False)
    base = torch.randn(16, 10, requires_grad=True)
    x = base.t()  # a transposed view
    y = layer(x)
    y.sum().backward()
    assert layer.weight.grad is None
    want = torch.ones(10, 32) @ layer.weight
    assert torch.allclose(base.grad, want.t(), atol=1e-5)
    assert torch.allclose(y, nn.functional.linear(x, layer.weight, layer.bias), atol=1e-5)


def test_inference_skips_autograd_and_small_products_stay_with_aten(monkeypatch):
    monkeypatch.setenv(gemm.ENV, 'onednn')
    calls = []
    monkeypatch.setattr(gemm, 'onednn', lambda x, w, b: calls.append(1) or nn.functional.linear(x, w, b))
    big, small = Linear(256, 256), Linear(8, 8)
    with torch.inference_mode():
        out = big(torch.randn(128, 256))
        small(torch.randn(4, 8))
    assert len(calls) == 1 and out.grad_fn is None  # 128*256*256 MACs pass MIN_MACS; 4*8*8 does not


def test_matmul_t_and_weight_grads_keep_small_products_off_onednn(monkeypatch):
    # Each shape oneDNN sees keeps a JIT kernel (~0.6 MB) cached: small products must not reach it.
    calls = []
    monkeypatch.setattr(gemm, 'onednn', lambda x, w, b: calls.append(x.shape) or nn.functional.linear(x, w, b))
    g = torch.Generator().manual_seed(0)
    x_small, w_small = torch.randn(512, 64, generator=g), torch.randn(64, 64, generator=g)
    x_big, w_big = torch.randn(1024, 256, generator=g), torch.randn(256, 256, generator=g)
    assert torch.allclose(gemm.matmul_t(x_small, w_small), x_small @ w_small.t(), atol=1e-5)
    assert torch.allclose(gemm.weight_grad(x_small, x_small), x_small.t() @ x_small, atol=1e-3)
    assert calls == []
    assert torch.allclose(gemm.matmul_t(x_big, w_big.t()), x_big @ w_big, atol=1e-4)
    gemm.weight_grad(x_big, x_big)
    assert calls == [(1024, 256), (256, 1024)]


def test_aten_choice_autocast_and_half_precision_fall_back(forced, monkeypatch):
    layer = Linear(32, 32)
    x = torch.randn(8, 32)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert layer(x).dtype == torch.bfloat16
    layer.to(torch.bfloat16)(x.bfloat16())
    assert forced == []
    monkeypatch.setenv(gemm.ENV, 'aten')
    Linear(32, 32)(x)
    assert forced == []


def test_bad_choice_names_the_variable(monkeypatch):
    monkeypatch.setenv(gemm.ENV, 'mkl')
    with pytest.raises(ValueError, match='SCEPTER_CPU_GEMM'):
        linear(torch.randn(4096, 64), torch.randn(64, 64))


def test_swapping_a_transformers_model_keeps_keys_and_numbers(forced):
    from transformers import CLIPTextConfig, CLIPTextModel
    cfg = CLIPTextConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=16)
    torch.manual_seed(0)
    model = CLIPTextModel(cfg).eval()
    ids = torch.randint(0, 100, (2, 16))
    keys = list(model.state_dict())
    with torch.no_grad():
        before = model(input_ids=ids).last_hidden_state
        swap_classes(model, SWAPS)
        after = model(input_ids=ids).last_hidden_state
    assert list(model.state_dict()) == keys
    assert all(type(m) is not nn.Linear for m in model.modules())
    assert forced and torch.allclose(before, after, atol=1e-5)


def test_probe_decides_by_speed_once_per_machine(monkeypatch, tmp_path):
    monkeypatch.setenv(gemm.ENV, 'auto')
    monkeypatch.setenv('SCEPTER_CACHE', str(tmp_path))
    gemm.probe_speedup.cache_clear()
    times = iter([1.0, 0.5] * 3)  # aten 1.0 s, oneDNN 0.5 s: 2x faster
    monkeypatch.setattr(gemm, '_best_time', lambda fn, reps=5: next(times))
    assert gemm.backend() == 'onednn'
    gemm.probe_speedup.cache_clear()  # a new process on the same machine: no new timing
    times = iter([1.0, 0.9] * 3)
    assert gemm.backend() == 'onednn' and next(times) == 1.0
    gemm.probe_cache_file().unlink()  # forgotten: probed again, within MIN_SPEEDUP keeps torch's default
    gemm.probe_speedup.cache_clear()
    times = iter([1.0, 0.9] * 3)
    assert gemm.backend() == 'aten'
    assert gemm.cpu_signature() in gemm.probe_cache_file().read_text()
    gemm.probe_speedup.cache_clear()


def test_probe_is_kept_apart_for_kernels_capped_below_the_cpu():
    """`bench/tiny_example.py --isa avx2` runs AVX2 kernels on an AVX-512 host: the speeds the
    probe compares are others, so it must not reuse the host's own result."""
    code = 'import torch; from scepter_core.accel import gemm; print(gemm.cpu_signature())'
    env = {**os.environ, 'ATEN_CPU_CAPABILITY': 'avx2', 'ONEDNN_MAX_CPU_ISA': 'AVX2'}
    capped = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True,
                            check=True, timeout=300).stdout.strip()
    assert capped.endswith('|AVX2 onednn AVX2') and capped != gemm.cpu_signature()


# ---- Conv2d ------------------------------------------------------------------------------------

def _twin(conv: Conv2d) -> nn.Conv2d:
    ref = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    bias=conv.bias is not None, groups=conv.groups)
    ref.load_state_dict(conv.state_dict())
    return ref


@pytest.mark.parametrize('kw,channels_last', [({'kernel_size': 3, 'padding': 1}, False),
                                              ({'kernel_size': 3, 'padding': 1}, True),
                                              ({'kernel_size': 3, 'stride': 2, 'padding': 0}, False),
                                              ({'kernel_size': 1, 'bias': False}, False)])
def test_packed_conv_matches_eager(kw, channels_last):
    torch.manual_seed(0)
    conv = Conv2d(16, 24, **kw)
    ref = _twin(conv)
    x = torch.randn(2, 16, 9, 9)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), packed_weights():
        out = conv(x)
        assert conv in packs()  # the packed path ran
        assert (out - ref(x)).abs().max() < 1e-5
        assert out.is_contiguous(memory_format=torch.channels_last) == channels_last


def test_packed_weight_follows_weight_changes():
    torch.manual_seed(1)
    conv = Conv2d(8, 8, 3, padding=1)
    x = torch.randn(1, 8, 5, 5)
    with torch.no_grad(), packed_weights():
        first = conv(x)
        conv.weight.mul_(2)  # in place, as an optimizer step
        assert torch.allclose(conv(x) - conv.bias[:, None, None], 2 * (first - conv.bias[:, None, None]), atol=1e-5)
        conv.load_state_dict(_twin(Conv2d(8, 8, 3, padding=1)).state_dict())
        assert (conv(x) - _twin(conv)(x)).abs().max() < 1e-5
        conv.weight = nn.Parameter(torch.zeros_like(conv.weight))  # replaced outright
        assert torch.allclose(conv(x), conv.bias[:, None, None].expand(1, 8, 5, 5))
        assert (conv(torch.randn(3, 8, 7, 7)) - conv.bias[:, None, None]).abs().max() < 1e-6  # a new shape


def test_packs_an_inference_tensor_weight():
    """FSDP gathers its weights under inference_mode: tensors without a version counter."""
    torch.manual_seed(2)
    conv = Conv2d(8, 8, 3, padding=1)
    ref = _twin(conv)
    with torch.inference_mode():
        conv.weight = nn.Parameter(conv.weight.detach().clone(), requires_grad=False)
        x = torch.randn(2, 8, 5, 5)
        with packed_weights():
            assert conv.weight.is_inference()
            assert (conv(x) - ref(x)).abs().max() < 1e-5 and conv in packs()


def test_training_and_limits_skip_packing(monkeypatch):
    conv = Conv2d(8, 8, 3, padding=1)
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    conv(x).sum().backward()  # gradients wanted: eager convolution
    assert conv not in packs() and conv.weight.grad is not None and x.grad is not None
    with torch.no_grad():
        conv(x)  # outside packed_weights(): eager
    assert conv not in packs()
    monkeypatch.setenv(packing.PACK_ENV, '0')
    with torch.no_grad(), packed_weights():
        conv(x)
        assert conv not in packs()
    monkeypatch.setenv(packing.PACK_ENV, 'lots')
    with pytest.raises(ValueError, match='SCEPTER_CPU_PACK_LIMIT_MB'), torch.no_grad(), packed_weights():
        conv(x)


def test_copies_do_not_share_the_packed_weight():
    conv = Conv2d(4, 4, 3, padding=1)
    x = torch.randn(1, 4, 5, 5)
    with torch.no_grad(), packed_weights():
        conv(x)
        twin = copy.deepcopy(conv)
        twin.weight.zero_()
        assert not torch.allclose(conv(x), twin(x))
        assert torch.allclose(twin(x), twin.bias[:, None, None].expand(1, 4, 5, 5))


def test_a_scope_in_another_thread_changes_nothing_here():
    """A sampler in one thread (the Studio's) holds packed_weights() while another thread trains:
    the trainer's frozen parts (VAE, under no_grad) must keep eager kernels and NCHW."""
    torch.manual_seed(3)
    net = nn.Sequential(Conv2d(8, 8, 3, padding=1))
    assert attach_layout_hooks(net)
    x = torch.randn(2, 8, 6, 6)
    entered, release = threading.Event(), threading.Event()
    seen = {}

    def sampler() -> None:
        with torch.no_grad(), packed_weights():
            seen['layout'] = packing.inference_layout(x)
            net(x)
            seen['packed'] = net[0] in packs()
            entered.set()
            release.wait(60)

    thread = threading.Thread(target=sampler)
    thread.start()
    try:
        assert entered.wait(60)
        assert seen == {'layout': torch.channels_last, 'packed': True}  # the sampler's thread packs
        with torch.no_grad():
            assert not packing.in_scope() and packing.inference_layout(x) is torch.contiguous_format
            out = net(x)
            assert net[0] not in packs() and out.is_contiguous()
            assert torch.equal(out, nn.functional.conv2d(x, net[0].weight, net[0].bias, padding=1))
    finally:
        release.set()
        thread.join()


def test_scope_ends_drop_packs_so_training_updates_are_seen():
    """Fused AdamW writes weights without bumping their version: only the scope keeps packs fresh."""
    torch.manual_seed(2)
    conv = Conv2d(8, 8, 3, padding=1)
    opt = torch.optim.AdamW(conv.parameters(), lr=0.1, fused=True)
    x = torch.randn(2, 8, 6, 6)
    for _ in range(2):
        with torch.no_grad(), packed_weights():
            with packed_weights():  # nested: the packs live until the outer scope ends
                conv(x)
            assert conv in packs()
            assert (conv(x) - _twin(conv)(x)).abs().max() < 1e-5
        assert conv not in packs()
        conv(x).square().mean().backward()
        opt.step()


@pytest.mark.parametrize('kw,channels_last', [({'kernel_size': 3, 'padding': 1}, False),
                                              ({'kernel_size': 3, 'padding': 1}, True),
                                              ({'kernel_size': 3, 'stride': 2, 'padding': 1}, False),
                                              ({'kernel_size': 1, 'bias': False}, False)])
def test_wide_kernels_on_small_maps_run_as_one_matmul(monkeypatch, kw, channels_last):
    monkeypatch.setenv(gemm.ENV, 'onednn')
    torch.manual_seed(0)
    conv = Conv2d(16, 256, **kw)  # 256 x kernel area against at most 1 x 2 x 2 output positions
    ref = _twin(conv)
    x = torch.randn(1, 16, 2, 2)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert conv._as_matmul(x)
        out = conv(x)
        assert out.shape == ref(x).shape and (out - ref(x)).abs().max() < 1e-5
        assert out.is_contiguous(memory_format=torch.channels_last) == channels_last or out.is_contiguous()
    assert not conv._as_matmul(x.requires_grad_())  # training keeps the convolution
    assert not conv._as_matmul(torch.randn(2, 16, 32, 32))  # a large map too
    monkeypatch.setenv(gemm.ENV, 'aten')
    assert not conv._as_matmul(torch.randn(1, 16, 2, 2))  # and so does a CPU where oneDNN is no faster


def test_small_pointwise_conv_in_training_runs_as_a_linear():
    torch.manual_seed(3)
    conv = Conv2d(64, 32, 1)
    ref = _twin(conv)
    x = torch.randn(2, 64, 5, 5, requires_grad=True)
    assert conv._small_pointwise_training(x)
    out = conv(x)
    g = torch.randn_like(out)
    out.backward(g)
    grads = [x.grad.clone(), conv.weight.grad, conv.bias.grad]
    x.grad = None
    expected = ref(x)
    expected.backward(g)
    assert out.is_contiguous() and (out - expected).abs().max() < 1e-5
    for a, b in zip(grads, [x.grad, ref.weight.grad, ref.bias.grad]):
        assert (a - b).abs().max() < 1e-4
    with torch.no_grad():
        assert not conv._small_pointwise_training(x)  # inference: the convolution (or its packed form)
    assert not Conv2d(64, 32, 3, padding=1)._small_pointwise_training(x)
    assert not conv._small_pointwise_training(torch.randn(64, 64, 32, 32, requires_grad=True))  # large: conv

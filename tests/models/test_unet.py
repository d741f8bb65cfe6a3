"""DiffusionUNet: SD1.5 size and names, numerical parity with diffusers, conditioning,
checkpointing, channels_last / bf16, pretrained loading."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny_sd import TINY_UNET, assert_same_layout, build, cfg

from scepter_core.checkpoint import save_state_dict
from scepter_core.convert import diffusers_unet_config, unet_keymap
from scepter_core.errors import ConfigError
from scepter_core.registry import BACKBONES

# diffusers' own config.json of the SD1.5 UNet (the published one, not derived by us).
SD15_DIFFUSERS_UNET = {
    'act_fn': 'silu', 'attention_head_dim': 8, 'block_out_channels': [320, 640, 1280, 1280],
    'center_input_sample': False, 'cross_attention_dim': 768,
    'down_block_types': ['CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'DownBlock2D'],
    'downsample_padding': 1, 'flip_sin_to_cos': True, 'freq_shift': 0, 'in_channels': 4, 'layers_per_block': 2,
    'mid_block_scale_factor': 1, 'norm_eps': 1e-05, 'norm_num_groups': 32, 'out_channels': 4, 'sample_size': 64,
    'up_block_types': ['UpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D'],
}


def _diffusers_twin(ours: torch.nn.Module, block: dict) -> torch.nn.Module:
    from diffusers import UNet2DConditionModel
    theirs = UNet2DConditionModel.from_config(diffusers_unet_config(block)).eval()
    theirs.load_state_dict(unet_keymap(block).to_theirs(ours.state_dict()), strict=True)
    return theirs


def test_sd15_has_the_published_size_and_every_key_maps_to_diffusers_and_back():
    ours_sd = assert_same_layout('BACKBONES', {'NAME': 'DiffusionUNet'}, 'UNet2DConditionModel', SD15_DIFFUSERS_UNET,
                                 unet_keymap(), num_params=859_520_964)
    # the LDM layout, by name
    assert {'time_embed.0.weight', 'input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight',
            'input_blocks.1.1.proj_in.weight', 'middle_block.1.norm.weight', 'output_blocks.11.0.skip_connection.weight',
            'out.0.weight', 'out.2.bias'} <= set(ours_sd)


@pytest.mark.parametrize('overrides', [
    {},
    {'USE_LINEAR_IN_TRANSFORMER': True},
    {'TRANSFORMER_DEPTH': 2, 'NUM_HEAD_CHANNELS': 16, 'ATTENTION_RESOLUTIONS': [1, 2]},
    {'USE_SCALE_SHIFT_NORM': True, 'NUM_CLASSES': 3, 'NUM_RES_BLOCKS': 2},
], ids=['conv-proj', 'linear-proj', 'depth2-headwidth', 'scale-shift-classes'])
def test_matches_diffusers_on_the_same_weights(overrides):
    block = cfg(TINY_UNET, **overrides)
    ours = build('BACKBONES', block, seed=1)
    theirs = _diffusers_twin(ours, block)
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 7, 32, generator=g)
    t = torch.tensor([3.0, 801.0])
    labels = torch.tensor([0, 2]) if 'NUM_CLASSES' in overrides else None
    with torch.no_grad():
        a = ours(x, t, {'crossattn': ctx, 'y': labels} if labels is not None else ctx)
        b = theirs(x, t, ctx, class_labels=labels).sample
    assert a.abs().max() > 0.05  # a real signal, not zero-initialised outputs
    assert (a - b).abs().max().item() < 1e-5


def test_odd_sizes_concat_condition_and_gradients_match_diffusers():
    block = cfg(TINY_UNET, IN_CHANNELS=6)  # 4 latent + 2 concatenated channels
    ours = build('BACKBONES', block, seed=2).train()
    theirs = _diffusers_twin(ours, block).train()
    g = torch.Generator().manual_seed(1)
    x, extra = torch.randn(1, 4, 13, 11, generator=g), torch.randn(1, 2, 13, 11, generator=g)
    ctx, t = torch.randn(1, 5, 32, generator=g), torch.tensor([250])
    a = ours(x, t, {'crossattn': ctx, 'concat': extra})
    b = theirs(torch.cat([x, extra], 1), t, ctx).sample
    assert a.shape == (1, 4, 13, 11) and (a - b).abs().max().item() < 1e-5
    a.square().mean().backward()
    b.square().mean().backward()
    ours_grads = {k: p.grad for k, p in ours.named_parameters()}
    their_grads = unet_keymap(block).to_ours({k: p.grad for k, p in theirs.named_parameters()})
    assert max((ours_grads[k] - their_grads[k]).abs().max().item() for k in ours_grads) < 1e-6


def test_gradient_checkpointing_gives_the_same_gradients():
    plain = build('BACKBONES', TINY_UNET, seed=3).train()
    ckpt = BACKBONES.build(cfg(TINY_UNET, USE_CHECKPOINT=True)).train()
    ckpt.load_state_dict(plain.state_dict())
    x, ctx = torch.randn(2, 4, 8, 8), torch.randn(2, 3, 32)
    for model in (plain, ckpt):
        model(x, torch.tensor([1, 999]), ctx).square().mean().backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-7), name


def test_channels_last_and_bf16_autocast():
    model = build('BACKBONES', TINY_UNET, seed=4)
    x, ctx, t = torch.randn(2, 4, 16, 16), torch.randn(2, 7, 32), torch.tensor([10, 20])
    with torch.no_grad():
        ref = model(x, t, ctx)
        model = model.to(memory_format=torch.channels_last)
        cl = model(x.contiguous(memory_format=torch.channels_last), t, ctx)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            half = model(x.contiguous(memory_format=torch.channels_last), t, ctx)
    assert (cl - ref).abs().max().item() < 1e-5
    assert half.dtype == torch.bfloat16
    assert (half.float() - ref).abs().max().item() < 0.05 * ref.abs().max().item()


def test_scalar_timestep_is_broadcast_over_the_batch():
    model = build('BACKBONES', TINY_UNET, seed=5)
    x, ctx = torch.randn(2, 4, 8, 8), torch.randn(2, 3, 32)
    with torch.no_grad():
        ref = model(x, torch.tensor([42, 42]), ctx)
        assert torch.equal(model(x, torch.tensor(42), ctx), ref) and torch.equal(model(x, 42, ctx), ref)


def test_pretrained_model_loads_an_ldm_file_with_prefix_and_ignore_keys(tmp_path):
    source = build('BACKBONES', TINY_UNET, seed=6)
    path = tmp_path / 'sd.safetensors'
    save_state_dict({f'model.diffusion_model.{k}': v for k, v in source.state_dict().items()}
                    | {'first_stage_model.encoder.conv_in.weight': torch.zeros(1)}, path)
    loaded = BACKBONES.build(cfg(TINY_UNET, PRETRAINED_MODEL=str(path)))
    assert not any(p.is_meta for p in loaded.parameters())
    for k, v in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    partial = BACKBONES.build(cfg(TINY_UNET, PRETRAINED_MODEL=str(path), IGNORE_KEYS=['out.', r'attn2\.to_k']))
    got, want = partial.state_dict(), source.state_dict()
    skipped = {k for k in want if not torch.equal(got[k], want[k])}
    # 'out.' is a literal prefix (not output_blocks / to_out); the regex hits every attn2.to_k
    to_k = {k for k in want if k.endswith('attn2.to_k.weight')}
    assert len(to_k) == 4 and skipped == {'out.0.weight', 'out.0.bias', 'out.2.weight', 'out.2.bias'} | to_k


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match='NUM_RES_BLOCKS'):
        BACKBONES.build(cfg(TINY_UNET, NUM_RES_BLOCKS=[1, 1, 1]))
    with pytest.raises(ConfigError, match='NUM_CLASSES'):
        BACKBONES.build(cfg(TINY_UNET, NUM_CLASSES='continuous'))


def test_conv_projections_run_as_linears_unless_wrapped():
    """SD1-style 1x1 proj_in / proj_out run as linear maps of the tokens: the same numbers and
    gradients as the convolutions; a wrapped projection (a LoRA layer) is still called."""
    from torch import nn

    from scepter_core.models.backbones.attention import SpatialTransformer
    torch.manual_seed(0)
    fast = SpatialTransformer(64, heads=2, dim_head=32, context_dim=32)
    nn.init.normal_(fast.proj_out.weight, std=0.05)
    plain = SpatialTransformer(64, heads=2, dim_head=32, context_dim=32)
    plain.load_state_dict(fast.state_dict())
    class Wrapped(nn.Module):  # a stand-in for a wrapped layer (peft's LoRA layers are not Conv2d)
        def __init__(self, conv: nn.Conv2d):
            super().__init__()
            self.conv, self.weight, self.bias = conv, conv.weight, conv.bias

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x)
    for name in ('proj_in', 'proj_out'):
        setattr(plain, name, Wrapped(getattr(plain, name)))
    calls = []
    plain.proj_in.register_forward_hook(lambda *a: calls.append('proj_in'))
    x, ctx = torch.randn(2, 64, 6, 5), torch.randn(2, 7, 32)
    outs = [m(x, context=ctx) for m in (fast, plain)]
    assert calls == ['proj_in']
    assert (outs[0] - outs[1]).abs().max() < 1e-5
    for m, out in zip((fast, plain), outs):
        out.square().sum().backward()
    for name in ('proj_in.weight', 'proj_out.weight', 'proj_out.bias', 'norm.weight'):
        a, b = fast.get_parameter(name).grad, plain.get_parameter(name).grad
        assert (a - b).abs().max() < 1e-4 * max(1.0, b.abs().max().item()), name


def test_geglu_keeps_only_its_projection_for_the_backward():
    from scepter_core.models.backbones.attention import GEGLU
    torch.manual_seed(0)
    layer = GEGLU(8, 16).double()
    x = torch.randn(2, 5, 8, dtype=torch.double, requires_grad=True)
    saved, projected = [], []
    layer.proj.register_forward_hook(lambda module, args, output: projected.append(output))
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = layer(x)
    weights = {p.untyped_storage().data_ptr() for p in layer.parameters()}
    kept = {t.untyped_storage().data_ptr() for t in saved} - weights
    assert kept == {x.untyped_storage().data_ptr(), projected[0].untyped_storage().data_ptr()}
    # The plain expression keeps gelu(gate) as well; values and gradients are the same.
    h, gate = F.linear(x, layer.proj.weight, layer.proj.bias).chunk(2, dim=-1)
    ref = h * F.gelu(gate)
    grad = torch.randn_like(ref)
    got = torch.autograd.grad(out, [x, layer.proj.weight], grad)
    want = torch.autograd.grad(ref, [x, layer.proj.weight], grad)
    assert torch.allclose(out, ref, atol=1e-12)
    assert all(torch.allclose(a, b, atol=1e-10) for a, b in zip(got, want))
    with torch.no_grad():
        assert torch.equal(layer(x), ref.detach())
    assert torch.autograd.gradcheck(lambda t: layer(t), (x,))
    # torch.compile traces the plain expression: no graph break for the Function's strided writes.
    assert torch._dynamo.explain(lambda t: layer(t).sum())(x).graph_break_count == 0

"""FLUX LoRA files: kohya's `lora_unet_double_blocks_0_img_attn_qkv` layout (BFL names) and
ComfyUI's `diffusion_model.*` layout, written from peft-trained adapters; diffusers'
FluxPipeline.load_lora_weights reads ours and gives the same output; round trips are bit-exact."""
from __future__ import annotations

import torch
from torch import nn

from scepter_core.convert.flux_map import flux_to_diffusers
from scepter_core.models.backbones.flux import Flux, pack
from scepter_core.tuners import apply_tuners, export_kohya, import_kohya
from scepter_core.tuners.formats import export_comfy
from scepter_core.tuners.files import detect_lora_format
from scepter_core.tuners.state import flatten

TINY = dict(IN_CHANNELS=16, HIDDEN_SIZE=32, NUM_HEADS=2, AXES_DIM=[4, 6, 6], VEC_IN_DIM=24, CONTEXT_IN_DIM=20,
            DEPTH=1, DEPTH_SINGLE_BLOCKS=1, GUIDANCE_EMBED=True)
LORA = {'NAME': 'SwiftLoRA', 'R': 4, 'LORA_ALPHA': 8, 'TARGET_MODULES':
        r'(model.double_blocks.*(.qkv|.proj|.img_mod.lin|.txt_mod.lin))|(model.single_blocks.*(.linear1|.linear2|.modulation.lin))$'}


class Net(nn.Module):
    """The network shape the tuner tools expect: the backbone under `.model`."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.model = Flux(TINY)


# diffusers' kohya-FLUX reader splits single blocks' linear1 at FLUX.1's real widths (3072 /
# 12288), which a tiny model does not have: the parity check adapts every other layer.
NOT_LINEAR1 = {**LORA, 'TARGET_MODULES': LORA['TARGET_MODULES'].replace('.linear1|', '')}


def tuned(block: dict = LORA) -> tuple[Net, dict[str, torch.Tensor]]:
    net = Net()
    base = {k: v.clone() for k, v in net.model.state_dict().items()}
    apply_tuners(net, [block])
    with torch.no_grad():  # trained adapters: B is no longer zero
        for n, p in net.named_parameters():
            if 'lora_B' in n:
                p.normal_(0, 0.1)
    return net, base


def inputs():
    g = torch.Generator().manual_seed(1)
    return (torch.randn(1, 4, 4, 6, generator=g), torch.randn(1, 3, 20, generator=g), torch.randn(1, 24, generator=g))


def test_kohya_file_loads_in_diffusers_with_the_same_output(tmp_path):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    net, base = tuned(NOT_LINEAR1)
    path = export_kohya(net, tmp_path / 'flux_lora.safetensors')
    from safetensors.torch import load_file
    keys = load_file(str(path))
    assert 'lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight' in keys
    assert 'lora_unet_single_blocks_0_linear2.lora_up.weight' in keys
    ref = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                 attention_head_dim=16, num_attention_heads=2, joint_attention_dim=20,
                                 pooled_projection_dim=24, guidance_embeds=True, axes_dims_rope=(4, 6, 6))
    ref.load_state_dict(flux_to_diffusers(base), strict=True)
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=None, text_encoder=None, tokenizer=None,
                        text_encoder_2=None, tokenizer_2=None, transformer=ref)
    pipe.load_lora_weights(str(path))
    x, txt, pooled = inputs()
    ids = torch.zeros(2, 3, 3)
    ids[..., 1], ids[..., 2] = torch.arange(2)[:, None], torch.arange(3)[None]
    with torch.no_grad():
        ours = net.model(x, torch.tensor([600.0]), {'crossattn': txt, 'y': pooled, 'guidance': torch.tensor([3.5])})
        theirs = ref(hidden_states=pack(x), encoder_hidden_states=txt, pooled_projections=pooled,
                     timestep=torch.tensor([0.6]), img_ids=ids.reshape(-1, 3), txt_ids=torch.zeros(3, 3),
                     guidance=torch.tensor([3.5])).sample
        plain = Net().model(x, torch.tensor([600.0]), {'crossattn': txt, 'y': pooled, 'guidance': torch.tensor([3.5])})
    assert (ours - plain).abs().max() > 1e-3  # the adapters change the output...
    torch.testing.assert_close(pack(ours), theirs, rtol=1e-4, atol=2e-5)  # ...as diffusers applies them


def test_kohya_and_comfy_round_trips_are_bit_exact(tmp_path):
    net, _ = tuned()
    original = flatten(import_kohya(export_kohya(net, tmp_path / 'k.safetensors'), net))
    for path in (export_kohya(net, tmp_path / 'k2.safetensors'), export_comfy(net, tmp_path / 'c.safetensors')):
        from safetensors.torch import load_file
        assert detect_lora_format(list(load_file(str(path)))) == 'kohya'
        back = flatten(import_kohya(path, net))
        assert back.keys() == original.keys() and len(back) == 9  # 6 layers per double block, 3 per single
        for name, e in back.items():
            assert torch.equal(e.down, original[name].down) and torch.equal(e.up, original[name].up)
            assert e.alpha == original[name].alpha == 8.0

"""kohya / A1111 and diffusers / peft LoRA files: round trips, names, and loading in diffusers."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lora_helpers import lora_blocks, randomize_adapters
from safetensors import safe_open
from safetensors.torch import save_file

from scepter_core.errors import CheckpointError
from scepter_core.tuners import (apply_tuners, export_kohya, export_peft_diffusers, import_kohya,
                                 import_peft_diffusers, model_lora_state)
from scepter_core.tuners.state import flatten


def assert_same_state(a, b):
    assert a.tensors.keys() == b.tensors.keys()
    for k in a.tensors:
        assert torch.equal(a.tensors[k], b.tensors[k]), k
    fa, fb = flatten(a), flatten(b)
    assert {m: e.alpha for m, e in fa.items()} == {m: e.alpha for m, e in fb.items()}


def test_ours_kohya_ours_gives_the_same_tensors(tuned, tmp_path: Path):
    path = export_kohya(tuned, tmp_path / 'k.safetensors')
    assert_same_state(model_lora_state(tuned), import_kohya(path, tuned))


def test_ours_diffusers_ours_gives_the_same_tensors(tuned, tmp_path: Path):
    path = export_peft_diffusers(tuned, tmp_path / 'd.safetensors')
    assert_same_state(model_lora_state(tuned), import_peft_diffusers(path, tuned))


def test_kohya_names_are_the_ones_sd_scripts_writes_for_sd15(tuned, tmp_path: Path):
    path = export_kohya(tuned, tmp_path / 'k.safetensors')
    with safe_open(str(path), 'pt') as f:
        keys = set(f.keys())
        alpha = f.get_tensor('lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.alpha')
    # diffusers-style UNet names, CLIP names under lora_te_text_model_, down/up/alpha per module
    assert 'lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight' in keys
    assert 'lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_0_proj.lora_up.weight' in keys
    assert 'lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight' in keys
    assert float(alpha) == 8.0 and len(keys) == 3 * len(flatten(model_lora_state(tuned)))


def test_kohya_files_with_ldm_names_and_no_alpha_load(tuned, tmp_path: Path):
    """Older files name the UNet by its original LDM modules; a missing alpha means alpha = rank."""
    ours = flatten(model_lora_state(tuned))
    module = 'model.input_blocks.1.1.transformer_blocks.0.attn2.to_v'
    kohya = 'lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_v'
    save_file({f'{kohya}.lora_down.weight': ours[module].down.contiguous(),
               f'{kohya}.lora_up.weight': ours[module].up.contiguous()}, str(tmp_path / 'ldm.safetensors'))
    state = import_kohya(tmp_path / 'ldm.safetensors', tuned)
    (entry,) = flatten(state).items()
    assert entry[0] == module and entry[1].alpha == 4.0 and torch.equal(entry[1].up, ours[module].up)


def test_mixed_ranks_and_alphas_survive_both_formats(tiny_model, tmp_path: Path):
    block = {'NAME': 'LoRA', 'R': 4, 'LORA_ALPHA': 4, 'TARGET_MODULES': 'model.*(to_q|to_k)$',
             'RANK_PATTERN': {'to_k': 2}, 'ALPHA_PATTERN': {'attn2.to_q': 16}}
    model = apply_tuners(tiny_model, block)
    randomize_adapters(model)
    ours = model_lora_state(model)
    ranks = {e.rank for e in flatten(ours).values()}
    alphas = {e.alpha for e in flatten(ours).values()}
    assert ranks == {2, 4} and alphas == {4.0, 16.0}
    assert_same_state(ours, import_kohya(export_kohya(model, tmp_path / 'k.safetensors'), model))
    assert_same_state(ours, import_peft_diffusers(export_peft_diffusers(model, tmp_path / 'd.safetensors'), model))


def test_unknown_entries_are_refused_by_name(tuned, tmp_path: Path):
    save_file({'lora_unet_down_blocks_0_attentions_0_proj_in.hada_w1_a': torch.zeros(2, 2)},
              str(tmp_path / 'loha.safetensors'))
    with pytest.raises(CheckpointError, match='hada_w1_a'):
        import_kohya(tmp_path / 'loha.safetensors', tuned)
    save_file({'lora_unet_no_such_layer.lora_down.weight': torch.zeros(2, 2),
               'lora_unet_no_such_layer.lora_up.weight': torch.zeros(2, 2)}, str(tmp_path / 'x.safetensors'))
    with pytest.raises(CheckpointError, match='lora_unet_no_such_layer'):
        import_kohya(tmp_path / 'x.safetensors', tuned)


def test_diffusers_loads_our_exports_with_the_same_output(tiny_model, tmp_path: Path):
    """A LoRA trained here, loaded by diffusers into the same UNet in its own layout, gives
    the same noise prediction: the files carry the right names, ranks and alphas."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    from scepter_core.convert import diffusers_unet_config, ours_to_diffusers
    unet_cfg = tiny_model.model.cfg
    base = ours_to_diffusers({f'model.{k}': v.clone() for k, v in tiny_model.model.state_dict().items()},
                             unet_cfg)['unet']
    model = apply_tuners(tiny_model, lora_blocks()[:1])
    randomize_adapters(model)
    g = torch.Generator().manual_seed(3)
    x, t, ctx = torch.randn(2, 4, 4, 4, generator=g), torch.tensor([3, 600]), torch.randn(2, 8, 32, generator=g)
    with torch.no_grad():
        ours = model.model(x, t, ctx)
    files = [export_kohya(model, tmp_path / 'k.safetensors'), export_peft_diffusers(model, tmp_path / 'd.safetensors')]
    for path in files:
        unet = UNet2DConditionModel(**diffusers_unet_config(unet_cfg)).eval()
        unet.load_state_dict(base)
        with torch.no_grad():
            plain = unet(x, t, ctx).sample
        sd, alphas, meta = StableDiffusionPipeline.lora_state_dict(str(path), return_lora_metadata=True)
        StableDiffusionPipeline.load_lora_into_unet(sd, alphas, unet, metadata=meta)
        with torch.no_grad():
            theirs = unet(x, t, ctx).sample
        assert (plain - ours).abs().max() > 1e-3
        torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)


def test_sd15_kohya_names_follow_the_a1111_block_arithmetic():
    """On the real SD1.5 UNet (built on the meta device: names only), every attention layer's
    kohya name maps back to its LDM block as A1111 computes it: down_blocks.b.attentions.a is
    input_blocks.(1 + 3b + a).1, up_blocks.b.attentions.a is output_blocks.(3b + a).1."""
    import re

    from scepter_core.registry import BACKBONES
    from scepter_core.tuners.formats import kohya_names
    with torch.device('meta'):
        holder = torch.nn.Module()
        holder.model = BACKBONES.build({'NAME': 'DiffusionUNet'})
    names = kohya_names(holder)
    attention = {o: k for o, k in names.items() if '.transformer_blocks.' in o or '.proj_' in o}
    assert len(attention) == 16 * 12  # 16 transformers x (proj_in, proj_out, 2 x 4 attn, 2 ff)
    for ours, kohya in attention.items():
        m = re.match(r'lora_unet_(down|up)_blocks_(\d)_attentions_(\d)_(.+)$', kohya)
        if m:
            b, a = int(m[2]), int(m[3])
            block = f'input_blocks.{1 + 3 * b + a}' if m[1] == 'down' else f'output_blocks.{3 * b + a}'
        else:
            m = re.match(r'lora_unet_mid_block_attentions_0_(.+)$', kohya)
            block = 'middle_block'
        assert ours.startswith(f'model.{block}.1.'), (ours, kohya)
        assert ours.replace('.', '_').endswith(m.groups()[-1]), (ours, kohya)

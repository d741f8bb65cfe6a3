"""apply_tuners: peft adapters where TARGET_MODULES says, everything else frozen."""
from __future__ import annotations

import logging

import pytest
import torch
from lora_helpers import (ROUNDING_ATOL, TEXT_TARGETS, UNET_TARGETS, denoiser_output, lora_blocks,
                          randomize_adapters)

from scepter_core.errors import ConfigError
from scepter_core.registry import TUNERS
from scepter_core.tuners import adapter_names, apply_tuners, base_model_hash, is_tuned, tuner_state_dict


def test_swiftlora_is_an_alias_of_lora_with_scepter_defaults():
    assert TUNERS.get('SwiftLoRA') is TUNERS.get('LoRA')
    tuner = TUNERS.build({'NAME': 'SwiftLoRA'})
    assert (tuner.cfg.R, tuner.cfg.LORA_ALPHA, tuner.cfg.BIAS) == (64, 64, 'none')
    config = tuner.lora_config()
    assert config.r == 64 and config.lora_alpha == 64 and not config.use_dora


def test_unet_and_text_blocks_adapt_exactly_the_matching_layers(tiny_model):
    model = apply_tuners(tiny_model, lora_blocks(), logging.getLogger('t'))
    assert adapter_names(model) == ['lora0', 'lora1'] and is_tuned(model)
    adapted = {n.rsplit('.lora_A.', 1)[0]: n.split('.')[-2] for n in tuner_state_dict(model) if '.lora_A.' in n}
    unet = {n for n, a in adapted.items() if a == 'lora0'}
    text = {n for n, a in adapted.items() if a == 'lora1'}
    # every transformer block of the UNet: q, k, v, out of two attentions and the two ff layers
    assert all(n.startswith('model.') for n in unet) and len(unet) == 10 * transformer_blocks(model)
    assert {n.split('.')[-1] for n in unet} >= {'to_q', 'to_k', 'to_v', '0', 'proj', '2'}
    assert text == {f'cond_stage_model.transformer.text_model.encoder.layers.0.{s}' for s in
                    ('self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj', 'self_attn.out_proj', 'mlp.fc1', 'mlp.fc2')}
    # ranks follow each block
    sd = tuner_state_dict(model)
    assert {v.shape[0] for k, v in sd.items() if '.lora_A.lora0.' in k} == {4}
    assert {v.shape[0] for k, v in sd.items() if '.lora_A.lora1.' in k} == {2}


def test_only_adapters_train_and_base_weights_are_untouched(tiny_model):
    before = base_model_hash(tiny_model)
    model = apply_tuners(tiny_model, lora_blocks(), None)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(tuner_state_dict(model))
    assert all('.lora_A.' in n or '.lora_B.' in n for n in trainable)
    # fresh adapters start as a no-op (B = 0) and the base-weight fingerprint ignores them
    assert base_model_hash(model) == before
    # a training step reaches both UNet and text-encoder adapters
    model.train()
    out = model(image=torch.randn(2, 3, 16, 16), prompt=['a red circle', 'a blue square'])
    out['loss'].backward()
    grads = {n.split('.')[0] for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert grads == {'model', 'cond_stage_model'}


def transformer_blocks(model: torch.nn.Module) -> int:
    return sum(n.endswith('transformer_blocks.0') for n, _ in model.model.named_modules())


def test_adapters_start_as_a_no_op_and_then_change_the_output(tiny_model):
    base = denoiser_output(tiny_model)
    model = apply_tuners(tiny_model, lora_blocks(), None)
    # B starts at zero, so every adapter adds exactly zero (bitwise: 0 * finite is 0) ...
    deltas = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: deltas.append(out))
             for n, m in model.named_modules() if '.lora_B.' in n]  # peft: lora_B.<adapter>
    fresh = denoiser_output(model)
    for h in hooks:
        h.remove()
    assert len(deltas) >= len(hooks) > 0 and all(not d.any() for d in deltas)
    # ... and the model computes what it did, up to the rounding of products whose buffers moved
    torch.testing.assert_close(fresh, base, atol=ROUNDING_ATOL, rtol=0)
    randomize_adapters(model)
    assert (denoiser_output(model) - base).abs().max() > 100 * ROUNDING_ATOL


def test_text_adapters_without_use_grad_warn(tiny_model, caplog):
    tiny_model.cond_stage_model.cfg.USE_GRAD = False
    with caplog.at_level(logging.WARNING):
        apply_tuners(tiny_model, [lora_blocks()[1]], logging.getLogger('tuner_test'))
    assert 'USE_GRAD' in caplog.text and 'cond_stage_model' in caplog.text


def test_bias_lora_only_trains_the_biases_of_adapted_layers(tiny_model):
    model = apply_tuners(tiny_model, [{'NAME': 'LoRA', 'R': 2, 'BIAS': 'lora_only', 'TARGET_MODULES': TEXT_TARGETS}])
    biases = {n for n, p in model.named_parameters() if p.requires_grad and n.endswith('.bias')}
    assert len(biases) == 6 and all('.base_layer.bias' in n for n in biases)
    assert biases <= set(tuner_state_dict(model))


def test_dora_adds_trainable_magnitudes(tiny_model):
    model = apply_tuners(tiny_model, [{'NAME': 'LoRA', 'R': 2, 'USE_DORA': True, 'TARGET_MODULES': TEXT_TARGETS}])
    magnitudes = {k: v for k, v in model.named_parameters() if '.lora_magnitude_vector.' in k}
    assert len(magnitudes) == 6 and all(v.requires_grad for v in magnitudes.values())
    assert set(magnitudes) <= set(tuner_state_dict(model))
    # one optimizer step moves every magnitude vector
    before = {k: v.detach().clone() for k, v in magnitudes.items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    model.train()
    torch.manual_seed(0)
    model(image=torch.randn(2, 3, 16, 16), prompt=['a red circle', 'a blue square'])['loss'].backward()
    optimizer.step()
    moved = {k for k, v in magnitudes.items() if (v.detach() - before[k]).abs().max() > 1e-6}
    assert moved == set(magnitudes)


def test_a_list_of_names_is_accepted_and_the_ema_copy_is_never_adapted(tiny_model):
    import copy
    tiny_model.model_ema = copy.deepcopy(tiny_model.model)
    model = apply_tuners(tiny_model, [{'NAME': 'LoRA', 'R': 2, 'TARGET_MODULES': ['attn2.to_k', 'attn2.to_v']}])
    names = {k.split('.lora_A.')[0] for k in tuner_state_dict(model) if '.lora_A.' in k}
    assert len(names) == 2 * transformer_blocks(model) and all(n.startswith('model.') for n in names)


@pytest.mark.parametrize('targets, message', [
    ('model.*(to_q', 'not a valid regex'),
    ('nothing_matches_this$', 'cannot be applied'),
])
def test_bad_target_modules_name_the_key(tiny_model, targets, message):
    block = {'NAME': 'SwiftLoRA', 'R': 2, 'TARGET_MODULES': targets}
    with pytest.raises(ConfigError, match=message) as e:
        apply_tuners(tiny_model, block)
    assert 'TARGET_MODULES' in str(e.value)


def test_unknown_key_is_a_config_error(tiny_model):
    with pytest.raises(ConfigError, match='RANK'):
        apply_tuners(tiny_model, [{'NAME': 'SwiftLoRA', 'RANK': 4, 'TARGET_MODULES': UNET_TARGETS}])

"""FrozenCLIPEmbedder against transformers' CLIPTextModel run directly on the same weights."""
from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModel

from scepter_core.base import dict_to_yaml
from scepter_core.errors import CheckpointError, ConfigError
from scepter_core.fs import FileNotAvailable
from scepter_core.models.embedders import FrozenCLIPEmbedder
from scepter_core.params import declared_params
from scepter_core.registry import EMBEDDERS

TINY = {'hidden_size': 32, 'intermediate_size': 64, 'num_hidden_layers': 3, 'num_attention_heads': 4}
PROMPTS = ['a photo of a cat', '', 'an astronaut riding a horse on the moon, highly detailed, 8k']


@pytest.fixture(scope='module')
def tiny_dir(tmp_path_factory):
    """A tiny random CLIP text model written the way transformers writes one."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp('clip') / 'clip-tiny'
    CLIPTextModel(CLIPTextConfig(**TINY)).save_pretrained(path)
    return path


@pytest.fixture(scope='module')
def reference(tiny_dir):
    return CLIPTextModel.from_pretrained(tiny_dir).eval()


def build(**keys) -> FrozenCLIPEmbedder:
    return EMBEDDERS.build({'NAME': 'FrozenCLIPEmbedder', **keys})


CASES = [('last', None, False), ('pooled', None, False), ('pooled', None, True),
         ('hidden', 0, False), ('hidden', 2, False), ('hidden', 3, True), ('hidden', -1, False),
         ('hidden', -2, True), ('hidden', -4, False)]


@pytest.mark.parametrize('layer,idx,norm', CASES)
def test_matches_transformers_for_every_layer_option(tiny_dir, reference, layer, idx, norm):
    emb = build(PRETRAINED_MODEL=str(tiny_dir), LAYER=layer, LAYER_IDX=idx, USE_FINAL_LAYER_NORM=norm)
    tokens = emb.tokenizer(PROMPTS)
    with torch.no_grad():
        out = reference(input_ids=tokens, output_hidden_states=True)
        want = {'last': out.last_hidden_state, 'pooled': out.pooler_output[:, None]}.get(layer)
        want = out.hidden_states[idx] if want is None else want
        want = reference.final_layer_norm(want) if norm else want
    got = emb.encode_text(tokens)
    assert got.shape == want.shape
    assert (got - want).abs().max().item() < 1e-5
    assert torch.equal(emb.encode(PROMPTS), got)  # encode() tokenizes with its own tokenizer


def test_pooled_is_the_end_token_state(tiny_dir):
    last = build(PRETRAINED_MODEL=str(tiny_dir)).encode(PROMPTS)
    pooled = build(PRETRAINED_MODEL=str(tiny_dir), LAYER='pooled').encode(PROMPTS)
    tokens = build(PRETRAINED_MODEL=str(tiny_dir)).tokenizer(PROMPTS)
    ends = (tokens == 49407).int().argmax(dim=1)
    assert torch.allclose(pooled[:, 0], last[torch.arange(len(PROMPTS)), ends])


def test_state_dict_keys_match_the_sd_checkpoint_layout(reference):
    emb = build(CONFIG=TINY)
    keys = set(emb.state_dict())
    assert 'transformer.text_model.final_layer_norm.weight' in keys
    assert 'transformer.text_model.encoder.layers.2.self_attn.q_proj.weight' in keys
    assert all(k.startswith('transformer.text_model.') for k in keys)
    # Weights keyed as in SD's cond_stage_model load strictly and reproduce the reference.
    renamed = {f'transformer.text_model.{k}': v for k, v in reference.state_dict().items()}
    emb.load_state_dict(renamed, strict=True)
    tokens = emb.tokenizer(PROMPTS)
    with torch.no_grad():
        assert torch.allclose(emb.encode_text(tokens), reference(input_ids=tokens).last_hidden_state, atol=1e-6)


def test_loads_through_an_ms_uri(tiny_dir, reference, tmp_path, monkeypatch):
    monkeypatch.setenv('SCEPTER_MIRROR', str(tmp_path))
    shutil.copytree(tiny_dir, tmp_path / 'ms' / 'org' / 'clip-tiny')
    emb = build(PRETRAINED_MODEL='ms://org/clip-tiny')
    tokens = emb.tokenizer(PROMPTS)
    with torch.no_grad():
        assert torch.allclose(emb.encode_text(tokens), reference(input_ids=tokens).last_hidden_state, atol=1e-6)


def test_loads_the_text_tower_of_a_full_clip_directory(tmp_path, caplog):
    """The SD1.5 recipe points at clip-vit-large-patch14: a whole CLIPModel."""
    torch.manual_seed(1)
    vision = {'hidden_size': 32, 'intermediate_size': 64, 'num_hidden_layers': 1, 'num_attention_heads': 4,
              'image_size': 32, 'patch_size': 16}
    full = CLIPModel(CLIPConfig(text_config=TINY, vision_config=vision))
    full.save_pretrained(tmp_path)
    with caplog.at_level(logging.INFO, logger='scepter'):
        emb = build(PRETRAINED_MODEL=str(tmp_path))
    assert any('non-text weights' in r.getMessage() for r in caplog.records)
    want = full.text_model.embeddings.token_embedding.weight
    assert torch.equal(emb.transformer.text_model.embeddings.token_embedding.weight, want)


def test_tokenizer_files_in_the_model_directory_are_used(tiny_dir, tmp_path, caplog):
    model_dir = tmp_path / 'with-tokenizer'
    shutil.copytree(tiny_dir, model_dir)
    build().tokenizer.tokenizer.save_pretrained(model_dir)  # tokenizer.json & co
    caplog.clear()  # count only what the two builds below log
    with caplog.at_level(logging.INFO, logger='scepter'):
        with_files = build(PRETRAINED_MODEL=str(model_dir), FREEZE=False)
        without = build(PRETRAINED_MODEL=str(tiny_dir), FREEZE=False)
    fallbacks = [r.getMessage() for r in caplog.records if 'packaged CLIP vocabulary' in r.getMessage()]
    assert len(fallbacks) == 1 and str(tiny_dir) in fallbacks[0]
    assert torch.equal(with_files.tokenizer(PROMPTS), without.tokenizer(PROMPTS))


@pytest.mark.parametrize('missing', ['ms://org/absent-clip', '/nonexistent/clip-dir'])
def test_missing_pretrained_model_names_the_path(missing):
    with pytest.raises(FileNotAvailable) as err:
        build(PRETRAINED_MODEL=missing)
    message = str(err.value)
    assert missing in message and 'PRETRAINED_MODEL' in message and '\n' not in message


def test_incomplete_weights_are_a_checkpoint_error(tiny_dir, tmp_path):
    shutil.copy(tiny_dir / 'config.json', tmp_path / 'config.json')
    weights = load_file(tiny_dir / 'model.safetensors')
    weights.pop('final_layer_norm.weight')
    save_file(weights, tmp_path / 'model.safetensors', metadata={'format': 'pt'})
    with pytest.raises(CheckpointError, match='final_layer_norm'):
        build(PRETRAINED_MODEL=str(tmp_path))


def test_default_config_is_sd15_text_encoder_size():
    with torch.device('meta'):
        emb = build()
    assert emb.num_parameters() == 123_060_480
    assert all(p.device.type == 'meta' for p in emb.parameters())
    assert json.loads(emb.transformer.text_model.config.to_json_string())['hidden_act'] == 'quick_gelu'


def test_freeze_keeps_eval_mode_and_no_grad():
    emb = build(CONFIG={**TINY, 'attention_dropout': 0.5})
    parent = nn.ModuleDict({'cond': emb}).train()
    assert parent.training and not emb.training
    assert not any(m.training for m in emb.modules())
    assert not any(p.requires_grad for p in emb.parameters())
    first, second = emb.encode(PROMPTS), emb.encode(PROMPTS)
    assert torch.equal(first, second) and not first.requires_grad  # dropout stays off


def test_trainable_embedder_passes_gradients():
    emb = build(CONFIG=TINY, FREEZE=False, USE_GRAD=True).train()
    assert emb.training and all(p.requires_grad for p in emb.parameters())
    emb.encode(['a cat']).pow(2).mean().backward()
    grad = emb.transformer.text_model.embeddings.token_embedding.weight.grad
    assert grad is not None and grad[320].abs().sum() > 0 and grad[1000].abs().sum() == 0
    # Without USE_GRAD no graph is built, even for trainable weights.
    assert not build(CONFIG=TINY, FREEZE=False).encode(['a cat']).requires_grad


@pytest.mark.parametrize('keys,needle', [
    ({'LAYER': 'hidden'}, 'LAYER_IDX'),
    ({'LAYER': 'hidden', 'LAYER_IDX': 4}, 'LAYER_IDX'),
    ({'LAYER': 'hidden', 'LAYER_IDX': -5}, 'LAYER_IDX'),
    ({'LAYER': 'penultimate'}, 'LAYER'),
    ({'MAX_LENGTH': 100}, 'MAX_LENGTH'),
    ({'CONFIG': {**TINY, 'hiden_size': 8}}, "Did you mean 'hidden_size'"),
])
def test_bad_keys_are_config_errors(keys, needle):
    with pytest.raises(ConfigError, match=needle):
        build(**{'CONFIG': TINY, **keys})


def test_config_templates():
    template = yaml.safe_load(FrozenCLIPEmbedder.get_config_template())['EMBEDDERS']
    assert set(template) - {'NAME'} == set(declared_params(FrozenCLIPEmbedder))
    assert template['CONFIG']['hidden_size'] == 768 and template['LAYER'] == 'last'

    class UserEmbedder(FrozenCLIPEmbedder):  # the seed's staticmethod pattern
        para_dict = {'EXTRA': {'value': 1, 'description': 'A user key.'}}

        @staticmethod
        def get_config_template():
            return dict_to_yaml('EMBEDDERS', __class__.__name__, UserEmbedder.para_dict, set_name=True)

    assert yaml.safe_load(UserEmbedder.get_config_template()) == {
        'EMBEDDERS': {'NAME': 'UserEmbedder', 'EXTRA': 1}}
    user = UserEmbedder({'CONFIG': TINY, 'EXTRA': 2})
    assert user.cfg.EXTRA == 2 and user.encode(['a cat']).shape == (1, 77, 32)

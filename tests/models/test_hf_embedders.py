"""HFEmbedder / T5PlusClipFluxEmbedder against diffusers' FluxPipeline.encode_prompt on the
same tiny encoders (a T5 tokenizer trained in the test, the shipped CLIP vocabulary)."""
from __future__ import annotations

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

from scepter_core.errors import CheckpointError, ConfigError
from scepter_core.registry import EMBEDDERS

from models.tiny_flow import write_clip_dir, write_t5_dir

PROMPTS = ['a red  circle on a white background', 'the   dog']


@pytest.fixture(scope='module')
def encoders(tmp_path_factory):
    root = tmp_path_factory.mktemp('flow_encoders')
    return write_t5_dir(root / 't5'), write_clip_dir(root / 'clip')


def flux_block(t5, clip, t5_length=16):
    return {'NAME': 'T5PlusClipFluxEmbedder',
            'T5_MODEL': {'NAME': 'HFEmbedder', 'HF_MODEL_CLS': 'T5EncoderModel', 'MODEL_PATH': str(t5),
                         'HF_TOKENIZER_CLS': 'T5Tokenizer', 'TOKENIZER_PATH': str(t5), 'MAX_LENGTH': t5_length,
                         'OUTPUT_KEY': 'last_hidden_state', 'D_TYPE': 'float32', 'BATCH_INFER': False,
                         'CLEAN': 'whitespace'},
            'CLIP_MODEL': {'NAME': 'HFEmbedder', 'HF_MODEL_CLS': 'CLIPTextModel', 'MODEL_PATH': str(clip),
                           'HF_TOKENIZER_CLS': 'CLIPTokenizer', 'TOKENIZER_PATH': str(clip), 'MAX_LENGTH': 77,
                           'OUTPUT_KEY': 'pooler_output', 'D_TYPE': 'float32', 'BATCH_INFER': True,
                           'CLEAN': 'whitespace', 'USE_GRAD_CHECKPOINT': True}}


def test_flux_conditions_equal_the_flux_pipeline(encoders):
    t5, clip = encoders
    ours = EMBEDDERS.build(flux_block(t5, clip)).encode(PROMPTS)
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=None, transformer=None,
                        text_encoder=CLIPTextModel.from_pretrained(clip), tokenizer=CLIPTokenizer.from_pretrained(clip),
                        text_encoder_2=T5EncoderModel.from_pretrained(t5),
                        tokenizer_2=T5TokenizerFast.from_pretrained(t5))
    # the pipeline does not collapse whitespace: give it what CLEAN gives the encoders
    cleaned = [' '.join(p.split()) for p in PROMPTS]
    embeds, pooled, _ = pipe.encode_prompt(cleaned, prompt_2=None, max_sequence_length=16, device='cpu')
    assert ours['crossattn'].shape == (2, 16, 16) and ours['y'].shape == (2, 24)
    torch.testing.assert_close(ours['crossattn'], embeds)
    torch.testing.assert_close(ours['y'], pooled)


def test_frozen_by_default_and_long_prompts_truncate(encoders):
    t5, clip = encoders
    embedder = EMBEDDERS.build(flux_block(t5, clip, t5_length=8))
    assert not any(p.requires_grad for p in embedder.parameters())
    out = embedder.encode(['circle ' * 100])
    assert out['crossattn'].shape[1] == 8


def test_missing_model_directory_is_named(tmp_path):
    block = {'NAME': 'HFEmbedder', 'MODEL_PATH': str(tmp_path / 'nowhere')}
    with pytest.raises((CheckpointError, ConfigError, FileNotFoundError, OSError), match='MODEL_PATH'):
        EMBEDDERS.build(block)


def test_unknown_model_class_is_refused(encoders):
    with pytest.raises(ConfigError, match='HF_MODEL_CLS'):
        EMBEDDERS.build({'NAME': 'HFEmbedder', 'HF_MODEL_CLS': 'os.system', 'MODEL_PATH': str(encoders[0])})

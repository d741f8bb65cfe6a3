"""CLIP score with a tiny random CLIP saved to a local directory, against a direct
computation with transformers."""
from __future__ import annotations

import json

import pytest
import torch

import scepter_core.metrics  # noqa: F401  (registers the metrics)
from scepter_core.errors import ScepterError
from scepter_core.registry import METRICS

MAX_TOKENS = 16
PROMPTS = ['a red circle', 'a blue square on green', 'yellow triangle',
           'a very long prompt about a small purple star drawn over an orange background']


@pytest.fixture(scope='module')
def clip_dir(tmp_path_factory):
    """A CLIP directory in transformers layout: random weights, a character-level BPE vocab."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer
    root = tmp_path_factory.mktemp('clip')
    letters = 'abcdefghijklmnopqrstuvwxyz'
    tokens = list(letters) + [c + '</w>' for c in letters] + ['<|startoftext|>', '<|endoftext|>']
    (root / 'vocab.json').write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (root / 'merges.txt').write_text('#version: 0.2\n')
    tokenizer = CLIPTokenizer(str(root / 'vocab.json'), str(root / 'merges.txt'))
    images = CLIPImageProcessor(size={'shortest_edge': 32}, crop_size={'height': 32, 'width': 32})
    bos, eos = len(tokens) - 2, len(tokens) - 1
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokens), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=MAX_TOKENS,
                         bos_token_id=bos, eos_token_id=eos, pad_token_id=eos),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    torch.manual_seed(0)
    model = CLIPModel(config)
    with torch.no_grad():
        # Both towers end near one shared direction, so cosines are positive and the
        # clamp at 0 does not hide the value; the small norm weights keep pairs distinct.
        shared = torch.randn(32)
        for norm in (model.vision_model.post_layernorm, model.text_model.final_layer_norm):
            norm.weight.fill_(0.5)
            norm.bias.copy_(shared)
        model.text_projection.weight.copy_(model.visual_projection.weight)
    model.save_pretrained(root)
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(root)
    return root


def _direct_score(root, images: torch.Tensor, prompts: list[str]) -> float:
    """The mean of 100 * max(cos(image embedding, text embedding), 0), straight from transformers."""
    from transformers import CLIPModel, CLIPProcessor
    model, processor = CLIPModel.from_pretrained(root).eval(), CLIPProcessor.from_pretrained(root)
    eight_bit = [img for img in (images * 255).round().byte()]
    inputs = processor(text=prompts, images=eight_bit, return_tensors='pt', padding=True,
                       truncation=True, max_length=MAX_TOKENS)
    with torch.no_grad():
        out = model(**inputs)
    cos = torch.nn.functional.cosine_similarity(out.image_embeds, out.text_embeds, dim=-1)
    assert (cos > 0).all() and cos.std() > 1e-3  # the regime the fixture sets up
    return (100 * cos.clamp(min=0)).mean().item()


def test_clip_score_matches_direct_computation(clip_dir):
    images = torch.rand(4, 3, 40, 48, generator=torch.Generator().manual_seed(1))
    metric = METRICS.build({'NAME': 'CLIPScore', 'PRETRAINED_MODEL': str(clip_dir)})
    metric.update(images[:2], prompts=PROMPTS[:2])
    metric.update(images[2:], prompts=PROMPTS[2:])  # the last prompt is longer than the encoder
    value = metric.compute()['clip_score']
    assert value == pytest.approx(_direct_score(clip_dir, images, PROMPTS), abs=1e-4)
    # Only matching pairs count: a different pairing gives a different score.
    metric.reset()
    metric.update(images, prompts=PROMPTS[::-1])
    swapped = metric.compute()['clip_score']
    assert swapped == pytest.approx(_direct_score(clip_dir, images, PROMPTS[::-1]), abs=1e-4)
    assert abs(swapped - value) > 1e-3


def test_clip_score_needs_prompts(clip_dir):
    metric = METRICS.build({'NAME': 'CLIPScore', 'PRETRAINED_MODEL': str(clip_dir)})
    with pytest.raises(ScepterError, match='one prompt per image'):
        metric.update(torch.rand(2, 3, 32, 32), prompts=['only one'])


def test_missing_clip_directory_names_key_and_path(tmp_path):
    for path, pattern in ((None, 'PRETRAINED_MODEL is not set'), (str(tmp_path / 'clip'), 'not found')):
        with pytest.raises(ScepterError, match=pattern) as err:
            METRICS.build({'NAME': 'CLIPScore', 'PRETRAINED_MODEL': path})
        assert '\n' not in str(err.value)


def test_directory_without_clip_files_is_a_clear_error(tmp_path):
    with pytest.raises(ScepterError, match='not a loadable CLIP directory'):
        METRICS.build({'NAME': 'CLIPScore', 'PRETRAINED_MODEL': str(tmp_path)})

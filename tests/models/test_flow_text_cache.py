"""Cached T5 / CLIP embeddings for the flow networks (SOLVER.CACHE_LATENTS + CACHE_DIR): both
conditions of FLUX's embedder ('crossattn' T5 tokens, 'y' CLIP pooled) are cached, the empty
prompt too, so caption dropout keeps working; a cached run equals an uncached one and a run that
finds every row on disk runs neither encoder."""
from __future__ import annotations

import logging

import torch
from models.tiny_flow import tiny_flux_network

from scepter_core.env import PY_RNG
from scepter_core.models.networks.latent_cache import enable_latent_cache
from scepter_core.registry import MODELS

PROMPTS = ['a red circle', 'a blue square', 'a red circle on white']


def build(root, cache_dir=None, weights=None):
    torch.manual_seed(0)
    model = MODELS.build(tiny_flux_network(root, P_ZERO=0.5))
    if weights is not None:  # the same weights (the first model built in a process draws others)
        model.load_state_dict(weights)
    if cache_dir is not None:
        enable_latent_cache(model, 64, logging.getLogger('test'), str(cache_dir))
    calls = []
    for encoder in (model.cond_stage_model.t5_model, model.cond_stage_model.clip_model):
        encoder.hf_module.register_forward_hook(lambda m, i, o: calls.append(type(m).__name__))
    return model, calls


def losses(model) -> list[float]:
    PY_RNG.seed(1)  # the caption dropout draws: the first caption is dropped
    torch.manual_seed(6)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        return [float(model(image=images, prompt=[PROMPTS[i % 3], PROMPTS[(i + 1) % 3]])['loss']) for i in range(3)]


def test_cached_flux_embeddings_equal_the_uncached_and_skip_the_encoders(tmp_path):
    plain, plain_calls = build(tmp_path)
    expected = losses(plain)
    assert plain_calls  # without a cache both encoders run at every step
    cold, cold_calls = build(tmp_path, tmp_path / 'cache', plain.state_dict())
    assert losses(cold) == expected
    cache = cold.latent_cache
    fields = {scope[-1] for scope, _ in cache.rows if scope[0] == 'text'}
    assert fields == {'crossattn', 'y'}
    prompts = {item for scope, item in cache.rows if scope[0] == 'text'}
    assert '' in prompts and prompts <= set(PROMPTS) | {''}  # caption dropout met the (cached) empty prompt
    # each distinct prompt set was encoded once: T5 and CLIP ran as many times, fewer than uncached
    assert cold_calls.count('T5EncoderModel') == cold_calls.count('CLIPTextModel') < plain_calls.count('T5EncoderModel')
    cache.disk.flush()
    warm, warm_calls = build(tmp_path, tmp_path / 'cache', plain.state_dict())
    assert losses(warm) == expected
    assert warm_calls == [] and warm.latent_cache.misses == 0 and warm.latent_cache.disk_hits > 0

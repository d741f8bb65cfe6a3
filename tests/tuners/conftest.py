"""Fixtures of the tuner tests: a tiny LatentDiffusion (real UNet, VAE and CLIP text model,
random weights), built once per session and copied per test."""
from __future__ import annotations

import copy

import pytest
import torch
from lora_helpers import TINY_MODEL, fill_zero_tensors, lora_blocks, randomize_adapters


@pytest.fixture(scope='module', autouse=True)
def _one_thread():
    """Tiny layers gain nothing from a second thread, and on a shared 2-core machine a
    second thread contending with other processes makes each op ten times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope='session')
def base_model():
    from scepter_core.registry import MODELS
    torch.manual_seed(0)
    model = MODELS.build(copy.deepcopy(TINY_MODEL))
    fill_zero_tensors(model)
    return model.eval()


@pytest.fixture
def tiny_model(base_model):
    """A fresh copy of the same tiny model for each test (building one costs seconds)."""
    return copy.deepcopy(base_model)


@pytest.fixture
def fresh_model(base_model):
    """A factory of further copies of the base model."""
    return lambda: copy.deepcopy(base_model)


@pytest.fixture
def tuned(tiny_model):
    """The tiny model with the _textlora recipe's two adapters, with random values."""
    from scepter_core.tuners import apply_tuners
    model = apply_tuners(tiny_model, lora_blocks(), None)
    randomize_adapters(model)
    return model

"""Solver switches (scepter_core/accel/switches.py, models/networks/latent_cache.py): latent and
text-embedding caching, frozen modules in the AMP dtype, torch.compile and its fallback, and
a training run with all of them switched on."""
from __future__ import annotations

import copy
import logging
from pathlib import Path

import pytest
import torch
from e2e.conftest import TINY_MODEL, tiny_recipe
from models.tiny_sd import randomize
from safetensors.torch import load_file

from scepter_core.config import Config
from scepter_core.env import PY_RNG
from scepter_core.launch import run_worker
from scepter_core.models.networks.latent_cache import LatentCache
from scepter_core.registry import MODELS
from scepter_core.accel.switches import cast_frozen_modules, compile_model, compile_unsupported_reason

LOG = logging.getLogger('test_fast_paths')
PROMPTS = ['a red circle', 'a blue square', 'a red circle', 'a green triangle']


pytestmark = pytest.mark.usefixtures('one_thread')


def tiny_ldm(frozen_text: bool = True, **overrides) -> torch.nn.Module:
    block = copy.deepcopy(TINY_MODEL)
    block['COND_STAGE_MODEL'].update(FREEZE=frozen_text, USE_GRAD=not frozen_text)
    block.update(overrides)
    torch.manual_seed(0)
    model = MODELS.build(block)
    with torch.no_grad():  # random values everywhere, frozen or not (zero-initialised outputs hide errors)
        randomize(model, seed=1, std=0.05)
    return model.train()


def images(seed: int = 0, n: int = 4, size: int = 16) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def train_loss(model: torch.nn.Module, x: torch.Tensor, seed: int = 5) -> torch.Tensor:
    torch.manual_seed(seed)
    PY_RNG.seed(seed)  # caption dropout
    return model.forward_train(image=x, prompt=list(PROMPTS))['loss']


# ---- latent / text-embedding cache -------------------------------------------------------------

def test_cached_training_gives_the_uncached_losses_and_serves_repeats_from_the_cache():
    model = tiny_ldm(P_ZERO=0.0)
    x = images()
    plain = [train_loss(model, x, seed) for seed in (5, 6)]
    model.latent_cache = LatentCache(logger=LOG)
    cached = [train_loss(model, x, seed) for seed in (5, 6)]
    # The posterior's moments are cached, its sample is drawn afresh: same random stream, same loss.
    torch.testing.assert_close(torch.stack(cached), torch.stack(plain), rtol=1e-5, atol=1e-6)
    assert plain[0] != plain[1]
    cache = model.latent_cache
    assert cache.misses == 4 + 3  # four images, three distinct prompts
    assert cache.hits == 1 + 4 + 4  # the repeated prompt, then the whole second batch


def test_cache_misses_on_other_pixels_resolution_or_dtype():
    vae = tiny_ldm().first_stage_model
    cache = LatentCache(logger=LOG)
    x = images()
    cache.encode_images(vae, x)
    cache.encode_images(vae, x.flip(-1))             # augmented pixels
    cache.encode_images(vae, images(size=32))        # another resolution
    with torch.autocast('cpu', dtype=torch.bfloat16):
        cache.encode_images(vae, x)                  # another compute dtype
    assert (cache.misses, cache.hits, len(cache.rows)) == (16, 0, 16)
    cache.encode_images(vae, x[:2])
    assert cache.hits == 2
    other = tiny_ldm().first_stage_model
    with torch.no_grad():
        other.decoder.conv_out.bias.add_(1.0)        # another model: another weight digest
    cache.encode_images(other, x)
    assert cache.misses == 20


def test_text_embeddings_are_cached_only_while_the_encoder_is_frozen():
    for frozen in (True, False):
        model = tiny_ldm(frozen_text=frozen)
        model.latent_cache = cache = LatentCache(logger=LOG)
        first = model.encode_prompts(PROMPTS)
        again = model.encode_prompts(PROMPTS)
        torch.testing.assert_close(first, again)
        assert (len(cache.rows) == 3) is frozen
        assert again.requires_grad is not frozen


def test_a_full_cache_stores_nothing_more_and_still_answers():
    vae = tiny_ldm().first_stage_model
    vae.cfg.USE_MODE = True  # the posterior mean: comparable across calls
    cache = LatentCache(max_mb=1e-4, logger=LOG)  # about 100 bytes: not one latent fits
    with torch.no_grad():
        got = cache.encode_images(vae, images())
        torch.testing.assert_close(got, vae.encode(images()))
    assert not cache.rows and cache.used_bytes == 0


# ---- frozen modules in the AMP dtype --------------------------------------------------------------

def test_frozen_modules_run_in_bf16_inside_and_outside_autocast_and_save_full_precision():
    model = tiny_ldm(USE_EMA=True)
    ref = copy.deepcopy(model)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    assert cast_frozen_modules(model, torch.bfloat16, LOG) == ['first_stage_model', 'cond_stage_model']
    assert model.first_stage_model.decoder.conv_out.weight.dtype == torch.bfloat16
    assert {p.dtype for p in model.model.parameters()} == {p.dtype for p in model.model_ema.parameters()} \
        == {torch.float32}  # the trained UNet and its EMA copy keep full precision
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in saved.items())  # checkpoints: the weights as they were

    z = torch.randn(2, 4, 4, 4)
    with torch.no_grad():  # outside autocast: fp32 in, fp32 out, bf16-close values
        got, want = model.decode_first_stage(z), ref.decode_first_stage(z)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0.05, atol=0.05)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        loss, ref_loss = train_loss(model, images()), train_loss(ref, images())
    loss.backward()
    assert torch.isfinite(loss) and abs(loss.item() - ref_loss.item()) < 0.05 * abs(ref_loss.item())
    assert model.model.out[2].weight.grad is not None

    # Weights loaded later reach both the live bf16 copy and the full-precision state.
    new = {k: v + 0.25 if k.startswith('first_stage_model.') and v.is_floating_point() else v
           for k, v in saved.items()}
    model.load_state_dict(new)
    key = 'first_stage_model.decoder.conv_out.weight'
    assert torch.equal(model.state_dict()[key], new[key])
    torch.testing.assert_close(model.first_stage_model.decoder.conv_out.weight.float(), new[key],
                               rtol=1e-2, atol=1e-2)


# ---- torch.compile --------------------------------------------------------------------------------

class Denoiser(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(8, 16), torch.nn.Linear(16, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.nn.functional.silu(self.a(x)))


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.model = Denoiser()


# Before any test compiles for real: kernels built in this process would be reused without a compiler.
def test_compile_falls_back_with_one_log_line_when_the_platform_cannot(monkeypatch, tmp_path, caplog):
    import torch._inductor.config as inductor
    monkeypatch.setattr(inductor.cpp, 'cxx', (str(tmp_path / 'no-such-compiler'),))  # a machine without C++
    monkeypatch.setattr(inductor, 'force_disable_caches', True)  # no kernel built earlier comes from disk
    torch._dynamo.reset()  # forget graphs compiled by earlier tests
    compile_unsupported_reason.cache_clear()
    try:
        net, x = Net(), torch.randn(3, 8)
        with caplog.at_level(logging.INFO, logger=LOG.name):
            assert not compile_model(net, torch.device('cpu'), LOG)
        # torch's own loggers may add their warnings (inductor does on some CPUs): count ours only
        ours = [r.getMessage() for r in caplog.records if r.name == LOG.name]
        assert len(ours) == 1 and 'running eagerly' in ours[0]
        assert net.model._compiled_call_impl is None
        torch.testing.assert_close(net.model(x), net.model.b(torch.nn.functional.silu(net.model.a(x))))
    finally:
        compile_unsupported_reason.cache_clear()


def test_compile_works_in_place_keeping_state_dict_names():
    if compile_unsupported_reason('cpu'):
        pytest.skip(f'torch.compile unavailable: {compile_unsupported_reason("cpu")}')
    net, x = Net(), torch.randn(3, 8)
    want, keys = net.model(x), list(net.state_dict())
    assert compile_model(net, torch.device('cpu'), LOG)
    from torch._dynamo.utils import counters
    before = counters['stats']['unique_graphs']
    torch.testing.assert_close(net.model(x), want)
    assert counters['stats']['unique_graphs'] > before  # really compiled
    assert list(net.state_dict()) == keys


# ---- all of them in a training run ----------------------------------------------------------------

def test_training_with_amp_cache_and_channels_last(tmp_path: Path):
    recipe = tiny_recipe(tmp_path / 'run', steps=3, USE_AMP=True, DTYPE='bfloat16', CACHE_LATENTS=True,
                         CHANNELS_LAST=True)
    recipe['SOLVER']['TRAIN_DATA'].update(NUM_SAMPLES=4, BATCH_SIZE=4)  # every step sees the same images
    solver = run_worker(Config(recipe), mode='train')
    model = solver.unwrapped_model
    assert model.latent_cache.hits == 8 and model.latent_cache.misses == 4
    assert model.first_stage_model.encoder.conv_in.weight.dtype == torch.bfloat16
    assert model.model.input_blocks[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    assert solver.optimizer.param_groups[0]['fused']  # fused AdamW on the CPU
    saved = load_file(str(Path(solver.state.last_checkpoint) / 'model.safetensors'))
    assert saved['first_stage_model.encoder.conv_in.weight'].dtype == torch.float32

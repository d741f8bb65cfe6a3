"""Disk caches (SOLVER.CACHE_DIR): latents and frozen text embeddings in safetensors shards,
reused by other runs and processes, recomputed only for what changed (VAE, resolution, a
file's bytes), caption dropout served the empty prompt's cached embedding, and a cached run
trains with the uncached run's losses."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from e2e.conftest import TINY_MODEL, tiny_recipe
from folder_files import make_folder
from image_files import gradient_image
from models.tiny_sd import randomize

from scepter_core.config import Config
from scepter_core.errors import ConfigError
from scepter_core.data_cache import fill_cache
from scepter_core.launch import run_worker
from scepter_core.models.networks.latent_cache import DiskStore, LatentCache
from scepter_core.registry import DATASETS, MODELS

pytestmark = pytest.mark.usefixtures('one_thread')
ROOT = Path(__file__).resolve().parents[2]
SHAPES = [(16, 16), (24, 24), (16, 32), (32, 16), (20, 20), (32, 64)]


def frozen_text_model() -> dict:
    block = copy.deepcopy(TINY_MODEL)
    block['COND_STAGE_MODEL'].update(FREEZE=True, USE_GRAD=False)
    return block


def recipe(tmp: Path, folder: Path, cache: Path | None, name: str, steps: int = 4, **data) -> Config:
    cfg = tiny_recipe(tmp / name, steps=steps, CACHE_LATENTS=cache is not None,
                      CACHE_DIR=str(cache) if cache else None, MODEL=frozen_text_model())
    cfg['SOLVER']['TRAIN_DATA'] = {'NAME': 'BucketImageDataset', 'DATA_DIR': str(folder), 'RESOLUTION': 16,
                                   'ALIGNMENT': 8, 'BATCH_SIZE': 2, 'CROP': 'center', **data}
    cfg['SOLVER']['TRAIN_HOOKS'] = [{'NAME': 'BackwardHook'}, {'NAME': 'LogHook', 'LOG_INTERVAL': 1}]
    return Config(yaml.safe_load(yaml.safe_dump(cfg)))


def losses(solver) -> list:
    return json.loads((solver.work_dir / 'loss_history.json').read_text())


def test_cached_runs_give_the_uncached_losses_and_later_runs_read_the_disk(tmp_path, monkeypatch):
    # Bitwise equality needs batch-invariant kernels: cached latents are encoded in other batches
    # than the plain run's, and on 2 threads oneDNN's convolutions round by batch (1e-7 in the loss).
    monkeypatch.setenv('OMP_NUM_THREADS', '1')  # the child process
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _cached_equals_uncached(tmp_path)
    finally:
        torch.set_num_threads(threads)


def _cached_equals_uncached(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / 'imgs', shapes=SHAPES)
    plain = run_worker(recipe(tmp_path, folder, None, 'plain'))
    cold = recipe(tmp_path, folder, tmp_path / 'cache', 'cold')  # in another process, written at its exit
    (tmp_path / 'cold.yaml').write_text(yaml.safe_dump(cold.to_dict()))
    env = {**os.environ, 'SCEPTER_PROGRESS': '0'}
    proc = subprocess.run([sys.executable, '-m', 'scepter_cli', 'train', '--cfg', str(tmp_path / 'cold.yaml')],
                          capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert list((tmp_path / 'cache').rglob('*.safetensors'))
    warm = run_worker(recipe(tmp_path, folder, tmp_path / 'cache', 'warm'))
    cache = warm.unwrapped_model.latent_cache
    assert cache.misses == 0 and cache.disk_hits > len(SHAPES)  # every latent and caption it met: from disk
    cold_losses = json.loads((tmp_path / 'cold' / 'loss_history.json').read_text())
    assert losses(plain) == cold_losses == losses(warm) and len(losses(plain)) == 4


def test_fill_rebuilds_only_what_changed(tmp_path):
    folder = make_folder(tmp_path / 'imgs', shapes=SHAPES)
    cache = tmp_path / 'cache'
    first = fill_cache(recipe(tmp_path, folder, cache, 'fill'))
    assert first['found'] == 0 and first['text'] == 1
    images, prompts = len(SHAPES), len(SHAPES) + 1  # every caption, and the empty prompt
    assert first['computed'] == images + prompts
    again = fill_cache(recipe(tmp_path, folder, cache, 'fill'))
    assert again['computed'] == 0 and again['found'] == images + prompts
    gradient_image(16, 32, seed=123).save(folder / '02.png')  # one file's bytes change
    changed = fill_cache(recipe(tmp_path, folder, cache, 'fill'))
    assert changed['computed'] == 1 and changed['found'] == images - 1 + prompts
    # Another budget: images whose pixels change are encoded again; those left as they were (too
    # small to be scaled either way) are found.
    before, after = (DATASETS.build(recipe(tmp_path, folder, cache, 'x', RESOLUTION=r).SOLVER.TRAIN_DATA)
                     for r in (16, 24))
    pixels = [{b.records[rec]['img_path']: b[(i, 0)]['image'] for i, (rec, _) in enumerate(b.entries)}
              for b in (before, after)]
    differ = sum(not (a.shape == pixels[1][p].shape and torch.equal(a, pixels[1][p])) for p, a in pixels[0].items())
    assert 0 < differ < images
    other_res = fill_cache(recipe(tmp_path, folder, cache, 'fill', RESOLUTION=24))
    assert other_res['computed'] == differ and other_res['found'] == images - differ + prompts


def model_and_images() -> tuple:
    """A small frozen-text model with random weights and three images in [-1, 1]."""
    torch.manual_seed(0)
    model = MODELS.build(frozen_text_model())
    randomize(model, seed=1, std=0.05)
    return model, torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_another_vae_recomputes_latents_only(tmp_path):
    model, x = model_and_images()
    cache = LatentCache(disk=DiskStore(tmp_path))
    model.latent_cache = cache
    with torch.no_grad():
        z = cache.encode_images(model.first_stage_model, x)
        model.encode_prompts(['a', 'b'])
    cache.disk.flush()
    fresh = LatentCache(disk=DiskStore(tmp_path))  # another run: nothing in memory
    model.latent_cache = fresh
    with torch.no_grad():
        assert torch.equal(fresh.lookup(*_moment_args(fresh, model, x)), cache.lookup(*_moment_args(cache, model, x)))
        model.encode_prompts(['a', 'b'])
    assert fresh.misses == 0 and fresh.disk_hits == 5
    other = copy.deepcopy(model.first_stage_model)
    randomize(other, seed=2, std=0.05)
    with torch.no_grad():
        fresh.encode_images(other, x)
        model.encode_prompts(['a', 'b'])
    assert fresh.misses == 3 and z.shape == (3, 4, 4, 4)


def _moment_args(cache, model, x):
    from scepter_core.models.networks.latent_cache import compute_dtype, tensor_digest
    vae = model.first_stage_model
    scope = ('latent', cache.model_digest(vae), tuple(x.shape[1:]), compute_dtype(vae))
    return scope, [tensor_digest(r) for r in x], lambda idx: torch.zeros(len(idx), 8, 4, 4)


def test_caption_dropout_with_cached_embeddings_uses_the_empty_prompt(tmp_path):
    torch.manual_seed(0)
    model = MODELS.build({**frozen_text_model(), 'P_ZERO': 1.0})
    randomize(model, seed=1, std=0.05)
    captions = ['tag0, a red thing', 'tag1, a blue thing']
    with torch.no_grad():
        empty, own = model.encode_prompts(['']), model.encode_prompts(captions)  # no cache: computed
    model.latent_cache = LatentCache(disk=DiskStore(tmp_path))
    with torch.no_grad():  # what `scepter data cache` stores: the captions and the empty prompt
        model.encode_prompts(captions + [''])
    model.latent_cache.disk.flush()
    seen = []
    model.model.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs['cond']), with_kwargs=True)
    for p_zero, expected in ((1.0, empty.expand(2, -1, -1)), (0.0, own)):
        model.p_zero = p_zero
        model.latent_cache = cache = LatentCache(disk=DiskStore(tmp_path))  # a later run: only the disk
        with torch.no_grad():
            model.forward_train(image=torch.zeros(2, 3, 16, 16), prompt=list(captions))
        assert cache.misses == 1 and cache.disk_hits == (1 if p_zero else 2)  # the image; text all from disk
        assert torch.equal(seen[-1], expected)
    assert not torch.allclose(empty.expand(2, -1, -1), own)


def test_scepter_data_cache_fills_the_directory_and_a_second_call_finds_it(tmp_path):
    folder = make_folder(tmp_path / 'imgs', shapes=SHAPES[:3])
    cfg = recipe(tmp_path, folder, None, 'cli')
    (tmp_path / 'recipe.yaml').write_text(yaml.safe_dump(cfg.to_dict()))
    env = {**os.environ, 'SCEPTER_PROGRESS': '0'}
    args = [sys.executable, '-m', 'scepter_cli', 'data', 'cache', '--cfg', str(tmp_path / 'recipe.yaml'),
            '--set', f'SOLVER.CACHE_DIR={tmp_path / "cache"}']
    first = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert 'cached: 7 rows computed, 0 already on disk' in first.stdout  # 3 latents, 3 captions, ''
    again = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert 'cached: 0 rows computed, 7 already on disk' in again.stdout, again.stdout + again.stderr
    with pytest.raises(ConfigError, match="'SOLVER.CACHE_DIR': set the cache directory"):
        fill_cache(cfg)

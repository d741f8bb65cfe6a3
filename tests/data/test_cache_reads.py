"""What a run over SOLVER.CACHE_DIR reads: a second run (in the same process: the first one
flushed its rows at its end) finds every latent and opens no image, even when the files no
longer decode; and the cache keys follow FLIP, the crop and the VAE, so a change misses."""
from __future__ import annotations

import copy
import os

import pytest
import torch
from folder_files import make_folder
from models.tiny_sd import randomize
from test_disk_cache import SHAPES, frozen_text_model, losses, model_and_images, recipe

import scepter_core.data.bucket_dataset as bucket_dataset
import scepter_core.data.sources as sources
from scepter_core.data_cache import fill_cache
from scepter_core.launch import run_worker
from scepter_core.models.networks.latent_cache import DiskStore, LatentCache
from scepter_core.registry import DATASETS, MODELS

pytestmark = pytest.mark.usefixtures('one_thread')


def counting(monkeypatch, module, name: str) -> list:
    """Calls of the real `module.name` are counted in the list returned."""
    calls, real = [], getattr(module, name)

    def wrapper(*args, **kwargs):
        calls.append(args[0] if args else None)
        return real(*args, **kwargs)
    monkeypatch.setattr(module, name, wrapper)
    return calls


def spoil_keeping_stat(path) -> None:
    """Overwrite a file with bytes that are no image, keeping its size and times."""
    st = os.stat(path)
    path.write_bytes(b'\0' * st.st_size)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_a_second_run_hits_the_cache_fully_and_reads_no_image(tmp_path, monkeypatch):
    folder = make_folder(tmp_path / 'imgs', shapes=SHAPES)
    cache_dir = tmp_path / 'cache'
    first = run_worker(recipe(tmp_path, folder, cache_dir, 'first'))
    assert first.unwrapped_model.latent_cache.misses > 0
    assert list((cache_dir / 'files').glob('*.json'))  # the scan's index: size, time -> digest, header
    for image in [*folder.glob('*.png'), *folder.glob('*.jpg')]:
        spoil_keeping_stat(image)  # any decode would now fail and skip the sample
    decodes = counting(monkeypatch, bucket_dataset, 'decode_rgb')
    reads = counting(monkeypatch, sources, 'read_record')
    second = run_worker(recipe(tmp_path, folder, cache_dir, 'second'))
    cache = second.unwrapped_model.latent_cache
    assert cache.misses == 0 and cache.disk_hits > 0
    assert decodes == [] and reads == [] and second.state.skipped_samples == 0
    assert losses(second) == losses(first) and len(losses(first)) == 4


def pixels(cfg) -> dict[str, torch.Tensor]:
    data = DATASETS.build(cfg.SOLVER.TRAIN_DATA)
    return {data.records[rec]['img_path']: data[(i, 0)]['image'] for i, (rec, _) in enumerate(data.entries)}


def differ(a: dict, b: dict) -> int:
    return sum(not (x.shape == b[p].shape and torch.equal(x, b[p])) for p, x in a.items())


def test_flip_and_crop_are_in_the_key(tmp_path):
    folder = make_folder(tmp_path / 'imgs', shapes=SHAPES)
    cache, images, prompts = tmp_path / 'cache', len(SHAPES), len(SHAPES) + 1
    base = recipe(tmp_path, folder, cache, 'fill')
    assert fill_cache(base)['computed'] == images + prompts
    flipped = recipe(tmp_path, folder, cache, 'fill', FLIP=1.0)
    assert differ(pixels(base), pixels(flipped)) == images  # every image mirrored
    stats = fill_cache(flipped)
    assert stats['computed'] == images and stats['found'] == prompts
    assert fill_cache(flipped)['computed'] == 0  # the mirrored side is kept apart, found again
    padded = recipe(tmp_path, folder, cache, 'fill', CROP='none')
    changed = differ(pixels(base), pixels(padded))
    assert 0 < changed < images  # squares fit their bucket either way
    stats = fill_cache(padded)
    assert stats['computed'] == changed and stats['found'] == images - changed + prompts


def test_named_latents_of_another_vae_miss(tmp_path):
    model, x = model_and_images()
    keys = ['a', 'b', 'c']
    cache = LatentCache(disk=DiskStore(tmp_path))
    with torch.no_grad():
        cache.encode_images(model.first_stage_model, x, keys)
    cache.disk.close()
    fresh = LatentCache(disk=DiskStore(tmp_path))
    with torch.no_grad():
        fresh.encode_images(model.first_stage_model, None, keys)  # no images: all from disk
        assert fresh.misses == 0 and fresh.disk_hits == 3
        other = copy.deepcopy(model.first_stage_model)
        randomize(other, seed=2, std=0.05)
        fresh.encode_images(other, x, keys)
        assert fresh.misses == 3
        with pytest.raises(Exception, match='not in the cache any more'):
            LatentCache(disk=DiskStore(tmp_path)).encode_images(other, None, ['d'])


def test_a_random_transform_keys_latents_by_pixels(tmp_path):
    folder = make_folder(tmp_path / 'imgs', shapes=SHAPES[:2])
    block = {'NAME': 'BucketImageDataset', 'DATA_DIR': str(folder), 'RESOLUTION': 16, 'ALIGNMENT': 8}
    plain = DATASETS.build(block)
    assert 'latent_key' in plain[(0, 0)]
    flip = dict(plain.cfg.TRANSFORMS[0], NAME='RandomHorizontalFlip')
    random = DATASETS.build({**block, 'TRANSFORMS': [flip, *plain.cfg.TRANSFORMS]})
    random.attach_latent_probe(lambda keys: True)
    assert random.signature is None and random.latent_probe is None
    assert 'latent_key' not in random[(0, 0)] and 'image' in random.__getitems__([(0, 0)])[0]


def test_an_alignment_the_model_cannot_take_is_refused_in_one_line(tmp_path):
    from scepter_core.errors import ConfigError
    from scepter_core.worker import build_solver
    folder = make_folder(tmp_path / 'imgs', shapes=SHAPES[:2])
    assert MODELS.build(frozen_text_model()).pixel_multiple == 8  # VAE factor 4 x one UNet downsampling
    with pytest.raises(ConfigError, match=r"'SOLVER.TRAIN_DATA.ALIGNMENT': 4 is not a multiple of 8"):
        build_solver(recipe(tmp_path, folder, None, 'odd', ALIGNMENT=4), 'train')

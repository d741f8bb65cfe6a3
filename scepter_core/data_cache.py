"""`scepter data cache --cfg RECIPE`: fill SOLVER.CACHE_DIR ahead of training with the latents
of one epoch of TRAIN_DATA and, when the text encoder is frozen, the embeddings of its
captions and of the empty / TRAIN_N_PROMPT prompt (what caption dropout trains on). Each rank
encodes its own share of the epoch (its slice of each step's batches, or of a stream's shards,
every sample of them once, the last partial batches included); a training run with the same
recipe then reads them. Batches whose latents are all on disk already are not decoded."""
from __future__ import annotations

import itertools
import math
from typing import Any

import torch
from torch.utils.data import IterableDataset

from .config import Config
from .env import we
from .errors import ConfigError


def epoch_batches(data: Any) -> int:
    """Batches per rank in one pass over `data` (a BucketSampler knows its own count)."""
    sampler = getattr(data, 'sampler', None)
    if hasattr(sampler, 'steps_per_epoch'):
        return sampler.steps_per_epoch
    return math.ceil(len(data) / (data.cfg.BATCH_SIZE * we.world_size))


def fill_cache(cfg: Config) -> dict[str, int]:
    """Run in each worker (launch); returns what this rank computed and found."""
    from .data.loader import build_dataloader
    from .worker import build_solver
    from .utils.progress import progress_bar
    if not cfg.SOLVER.get('CACHE_DIR'):
        raise ConfigError("'SOLVER.CACHE_DIR': set the cache directory to fill (e.g. --set SOLVER.CACHE_DIR=./cache)")
    cfg.set('SOLVER.CACHE_LATENTS', True)
    cfg.set('SOLVER.TRAIN_HOOKS', [])  # nothing trains: no checkpoints, logs or probes
    solver = build_solver(cfg, 'train')
    model = solver.unwrapped_model
    cache = model.latent_cache
    data = solver.datas['train']
    if isinstance(data, IterableDataset):  # a stream: one pass over this rank's shards
        data.configure(solver.cfg.SEED, we.rank, we.world_size, 0)
        loader, steps = data.batches(once=True), None
    else:
        loader = build_dataloader(data, seed=solver.cfg.SEED, rank=we.rank, world_size=we.world_size)
        steps = epoch_batches(data)
    encoder = model.cond_stage_model
    text_frozen = encoder is not None and not any(p.requires_grad for p in encoder.parameters())
    model.eval()
    with torch.no_grad(), solver.autocast(), progress_bar(steps, 'caching', enabled=we.is_main) as advance:
        if text_frozen:
            model.encode_prompts(sorted({'', model.train_n_prompt}))
        done = 0
        for batch in itertools.islice(loader, steps):
            image = batch.get('image')
            cache.encode_images(model.first_stage_model, image.to(we.device) if image is not None else None,
                                batch.get('latent_key'))
            if text_frozen:
                model.encode_prompts(list(batch['prompt']))
            done += 1
            advance(1)
    cache.disk.close()
    stats = {'batches': done, 'computed': cache.misses, 'found': cache.disk_hits, 'text': int(text_frozen)}
    solver.logger.info(f"cache {cfg.SOLVER.CACHE_DIR}: {stats['computed']} rows computed, {stats['found']} found "
                       f"on disk ({steps} batches{', text embeddings too' if text_frozen else ''})")
    return stats

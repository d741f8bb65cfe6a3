"""A memo of frozen encoders' outputs, for training on small datasets (SOLVER.CACHE_LATENTS).

The frozen autoencoder gives the same posterior for the same pixels, and a frozen text encoder
the same embedding for the same prompt, at every epoch: computing them once is enough. Entries
are keyed by the encoder's weights (a digest taken at first use), the input's resolution, the
compute dtype, and the image's bytes or the prompt's text; so augmented images, another model or
another precision simply miss. Latents keep their randomness: the cache holds the posterior's
moments and a fresh sample is drawn each time, exactly as without the cache.

With SOLVER.CACHE_DIR the rows also go to disk (DiskStore: safetensors shards), where other runs
and processes find them. The key is the same: the encoder's weights, the input's shape and dtype,
and the bytes of the pixels the encoder sees, which follow from the file's bytes and every
transform/bucket setting; so changing the VAE, the resolution or one file recomputes just what
changed. Batches of the bucket datasets name their pixels before decoding them (`latent_key`:
the file's digest, its bucket placement, flip and the transform settings); their rows are kept
under that name, and the datasets ask the disk (`DiskProbe`) so that a batch whose latents are
all there is never read or decoded. Text rows are keyed by the prompt itself: caption dropout
trains on the empty prompt's (cached) embedding, not on a dropped caption's."""
from __future__ import annotations

import atexit
import hashlib
import logging
import multiprocessing.util
import os
import time
from pathlib import Path
from typing import Any, Callable, Hashable

import torch
from torch import nn

from ...errors import ScepterError
from ..autoencoders.distributions import DiagonalGaussian


def tensor_digest(x: torch.Tensor) -> str:
    """A digest of a tensor's bytes (its dtype and shape included)."""
    data = x.detach().cpu().contiguous().flatten().view(torch.uint8).numpy()
    h = hashlib.blake2b(data.tobytes(), digest_size=16)
    h.update(f'{x.dtype}{tuple(x.shape)}'.encode())
    return h.hexdigest()


def compute_dtype(module: nn.Module) -> torch.dtype:
    """The dtype `module` computes in right now: autocast's when enabled, else its weights'."""
    p = next(module.parameters())
    if torch.is_autocast_enabled(p.device.type):
        return torch.get_autocast_dtype(p.device.type)
    return p.dtype


def _layout(x: torch.Tensor) -> torch.memory_format:
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def key_name(item: Hashable) -> str:
    """A row's name in a shard: a digest of its key (prompts can be any text)."""
    return hashlib.blake2b(repr(item).encode(), digest_size=16).hexdigest()


def scope_dir(root: Path, scope: Hashable) -> Path:
    return Path(root) / hashlib.blake2b(repr(scope).encode(), digest_size=12).hexdigest()


class DiskProbe:
    """`probe(items)`: whether every row of `items` is on disk in `scope` (shards written since
    the last call are looked at when one is not known). Small and picklable: the loader's
    workers ask it before they decode a batch."""

    def __init__(self, root: str | Path, scope: Hashable):
        self.folder = scope_dir(Path(root), scope)
        self.names: set[str] = set()
        self.shards: set[str] = set()

    def __call__(self, items: list[Hashable]) -> bool:
        names = [key_name(item) for item in items]
        if all(n in self.names for n in names):
            return True
        from safetensors import safe_open
        for shard in sorted(self.folder.glob('*.safetensors')):
            if shard.name not in self.shards:
                with safe_open(str(shard), 'pt') as f:
                    self.names.update(f.keys())
                self.shards.add(shard.name)
        return all(n in self.names for n in names)


class DiskStore:
    """Rows in safetensors shards under `root/<scope digest>/`. Each process writes shards of its
    own (a temporary name, then a rename), so concurrent runs never see half a file and never
    write the same file; a shard is never changed once written."""

    def __init__(self, root: str | Path, flush_rows: int = 512, flush_seconds: float = 60.0,
                 logger: logging.Logger | None = None):
        self.root = Path(root)
        self.flush_rows, self.flush_seconds = flush_rows, flush_seconds
        self.logger = logger or logging.getLogger(__name__)
        self.pending: dict[Hashable, dict[str, torch.Tensor]] = {}
        self.index: dict[Hashable, dict[str, Path]] = {}
        self.written = 0
        self._oldest = 0.0
        # Pending rows reach the disk at exit too: atexit for a plain process, multiprocessing's
        # finalizers for a spawned worker (which leaves through os._exit, skipping atexit).
        atexit.register(self.flush)
        multiprocessing.util.Finalize(self, self.flush, exitpriority=10)

    def scope_dir(self, scope: Hashable) -> Path:
        return scope_dir(self.root, scope)

    def probe(self, scope: Hashable) -> 'DiskProbe':
        return DiskProbe(self.root, scope)

    def close(self) -> None:
        """Write what is pending (the end of a run); the exit handlers are then not needed."""
        self.flush()
        atexit.unregister(self.flush)

    def _index(self, scope: Hashable) -> dict[str, Path]:
        if scope not in self.index:
            from safetensors import safe_open
            names: dict[str, Path] = {}
            for shard in sorted(self.scope_dir(scope).glob('*.safetensors')):
                with safe_open(str(shard), 'pt') as f:
                    names.update(dict.fromkeys(f.keys(), shard))
            self.index[scope] = names
        return self.index[scope]

    def get(self, scope: Hashable, items: list[Hashable]) -> dict[Hashable, torch.Tensor]:
        """The rows of `items` found on disk (CPU tensors)."""
        from safetensors import safe_open
        index = self._index(scope)
        by_shard: dict[Path, list[Hashable]] = {}
        for item in items:
            shard = index.get(key_name(item))
            if shard is not None:
                by_shard.setdefault(shard, []).append(item)
        found = {}
        for shard, wanted in by_shard.items():
            with safe_open(str(shard), 'pt') as f:
                found.update({item: f.get_tensor(key_name(item)) for item in wanted})
        return found

    def put(self, scope: Hashable, item: Hashable, row: torch.Tensor) -> None:
        if not self.pending:
            self._oldest = time.monotonic()
        self.pending.setdefault(scope, {})[key_name(item)] = row.detach().cpu().contiguous()
        if sum(len(rows) for rows in self.pending.values()) >= self.flush_rows or \
                time.monotonic() - self._oldest > self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        from safetensors.torch import save_file
        for scope, rows in self.pending.items():
            folder = self.scope_dir(scope)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / 'scope.txt').write_text(repr(scope) + '\n')
            final = folder / f'{time.time_ns():x}-{os.getpid()}-{self.written}.safetensors'
            tmp = final.with_suffix('.tmp')
            save_file(rows, str(tmp))
            os.replace(tmp, final)
            self.written += 1
            self._index(scope).update(dict.fromkeys(rows, final))
        self.pending = {}


class LatentCache:
    """Rows of a frozen encoder's output, keyed per input; at most `max_mb` megabytes kept."""

    def __init__(self, max_mb: float = 1024, logger: logging.Logger | None = None,
                 disk: DiskStore | None = None):
        self.max_bytes = int(max_mb * 2 ** 20)
        self.disk = disk
        self.disk_hits = 0
        self.logger = logger or logging.getLogger(__name__)
        self.rows: dict[Hashable, torch.Tensor] = {}
        self.used_bytes = 0
        self.hits = self.misses = 0
        self._digests: dict[int, str] = {}
        self._layouts: dict[Hashable, torch.memory_format] = {}
        self._text_fields: dict[Hashable, tuple[str, ...] | None] = {}
        self._full = False

    def model_digest(self, module: nn.Module) -> str:
        """Digest of `module`'s weights, taken once (a frozen module does not change)."""
        if id(module) not in self._digests:
            h = hashlib.blake2b(digest_size=16)
            for name, t in module.state_dict().items():
                h.update(name.encode())
                h.update(tensor_digest(t).encode())
            self._digests[id(module)] = h.hexdigest()
        return self._digests[id(module)]

    def lookup(self, scope: Hashable, items: list[Hashable], compute: Callable[[list[int]], torch.Tensor],
               device: torch.device | str = 'cpu') -> torch.Tensor:
        """Stacked rows for `items` (within `scope`); `compute(indices)` gives the rows (stacked)
        of the missing ones. The result keeps the memory layout `compute` gives (channels_last
        or not), since the random draws of `randn_like` on it depend on that layout."""
        keys = [(scope, item) for item in items]
        first = {}  # each distinct missing key -> its first index
        for i, k in enumerate(keys):
            if k not in self.rows:
                first.setdefault(k, i)
        loaded: dict[Hashable, torch.Tensor] = {}
        if first and self.disk is not None:  # written by an earlier run or another process
            for item, row in self.disk.get(scope, [k[1] for k in first]).items():
                loaded[(scope, item)] = row.to(device)
                first.pop((scope, item))
                self._store((scope, item), loaded[(scope, item)])
            self.disk_hits += len(loaded)
        fresh: dict[Hashable, torch.Tensor] = {}
        if first:
            rows = compute(list(first.values()))
            self._layouts[scope] = _layout(rows)
            fresh = dict(zip(first, rows))
            if self.disk is not None:
                for (_, item), row in fresh.items():
                    self.disk.put(scope, item, row)
        self.hits += len(keys) - len(fresh)
        self.misses += len(fresh)
        for k, row in fresh.items():
            self._store(k, row)
        out = torch.stack([fresh[k] if k in fresh else loaded[k] if k in loaded else self.rows[k] for k in keys])
        return out.contiguous(memory_format=self._layouts.get(scope, torch.contiguous_format))

    def _store(self, key: Hashable, row: torch.Tensor) -> None:
        size = row.numel() * row.element_size()
        if self.used_bytes + size > self.max_bytes:
            if not self._full:
                self._full = True
                self.logger.info(f'CACHE_LATENTS: cache full at {len(self.rows)} entries '
                                 f'({self.used_bytes / 2 ** 20:.0f} MB, CACHE_MAX_MB); the rest is computed each time')
            return
        self.rows[key] = row.detach().clone()
        self.used_bytes += size

    # ---- the two encoders --------------------------------------------------------------------
    def named_scope(self, autoencoder: nn.Module, dtype: torch.dtype) -> tuple:
        """The scope of latents named by the datasets' `latent_key` (the key holds the size)."""
        return ('latent-named', self.model_digest(autoencoder), dtype)

    def encode_images(self, autoencoder: nn.Module, images: torch.Tensor | None,
                      keys: list[str] | None = None) -> torch.Tensor:
        """`autoencoder.encode(images)` with the posterior moments of each image memoised, under
        `keys` (the batch's latent_key) when given, else under a digest of each image's pixels.
        `images` may be None when every key is cached (the dataset read no image)."""
        if not hasattr(autoencoder, 'encode_posterior'):
            return autoencoder.encode(images)

        def moments(indices: list[int]) -> torch.Tensor:
            if images is None:
                raise ScepterError(f'CACHE_DIR: {len(indices)} latents of this batch are not in the cache any more, '
                                   f'and its images were not read (was the cache directory changed during the run?)')
            posterior = autoencoder.encode_posterior(images[indices])
            return torch.cat([posterior.mean, posterior.logvar], dim=1)
        if keys is not None:
            scope, items = self.named_scope(autoencoder, compute_dtype(autoencoder)), list(keys)
        else:
            scope = ('latent', self.model_digest(autoencoder), tuple(images.shape[1:]), compute_dtype(autoencoder))
            items = [tensor_digest(x) for x in images.detach().cpu()]  # one transfer for the batch
        device = images.device if images is not None else next(autoencoder.parameters()).device
        posterior = DiagonalGaussian(self.lookup(scope, items, moments, device))
        return posterior.mode() if autoencoder.cfg.USE_MODE else posterior.sample()

    def encode_texts(self, embedder: nn.Module | None, prompts: list[str],
                     encode: Callable[[list[str]], Any]) -> Any:
        """`encode(prompts)`, memoised per prompt while `embedder` is frozen."""
        if embedder is None or any(p.requires_grad for p in embedder.parameters()):
            return encode(prompts)  # a text encoder that trains changes at every step
        scope = ('text', self.model_digest(embedder), compute_dtype(embedder))
        device = next(embedder.parameters()).device
        runs: dict[tuple[int, ...], Any] = {}

        def run(idx: list[int]) -> Any:  # one encoder pass per distinct set of missing prompts
            if tuple(idx) not in runs:
                runs[tuple(idx)] = encode([prompts[i] for i in idx])
            return runs[tuple(idx)]
        # A dict of conditions (the flow embedders declare its keys, so a run that finds every
        # row on disk runs no encoder) or one tensor.
        fields = getattr(embedder, 'output_fields', None)
        if fields is None and scope not in self._text_fields:
            out = run(list(range(len(prompts))))
            self._text_fields[scope] = tuple(out) if isinstance(out, dict) else None
        fields = fields or self._text_fields[scope]
        if fields is None:
            return self.lookup(scope, list(prompts), run, device)
        return {f: self.lookup(scope + (f,), list(prompts), lambda idx, f=f: run(idx)[f], device) for f in fields}


def enable_latent_cache(model: nn.Module, max_mb: float, logger: logging.Logger,
                        cache_dir: str | None = None) -> LatentCache | None:
    """Give `model` (a LatentDiffusion) a cache (on disk too with `cache_dir`); models that
    encode no latents are left alone."""
    if not hasattr(model, 'latent_cache'):
        logger.warning(f'SOLVER.CACHE_LATENTS: {type(model).__name__} encodes no latents; ignored')
        return None
    disk = DiskStore(cache_dir, logger=logger) if cache_dir else None
    model.latent_cache = LatentCache(max_mb, logger, disk=disk)
    where = f' and in {cache_dir}' if cache_dir else ''
    logger.info(f'CACHE_LATENTS: latents and frozen text embeddings cached (up to {max_mb} MB in memory{where})')
    return model.latent_cache

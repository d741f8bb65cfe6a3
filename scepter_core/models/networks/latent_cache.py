"""A memo of frozen encoders' outputs, for training on small datasets (SOLVER.CACHE_LATENTS).

The frozen autoencoder gives the same posterior for the same pixels, and a frozen text encoder
the same embedding for the same prompt, at every epoch: computing them once is enough. Entries
are keyed by the encoder's weights (a digest taken at first use), the input's resolution, the
compute dtype, and the image's bytes or the prompt's text; so augmented images, another model or
another precision simply miss. Latents keep their randomness: the cache holds the posterior's
moments and a fresh sample is drawn each time, exactly as without the cache."""
from __future__ import annotations

import hashlib
import logging
from typing import Any, Callable, Hashable

import torch
from torch import nn

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


class LatentCache:
    """Rows of a frozen encoder's output, keyed per input; at most `max_mb` megabytes kept."""

    def __init__(self, max_mb: float = 1024, logger: logging.Logger | None = None):
        self.max_bytes = int(max_mb * 2 ** 20)
        self.logger = logger or logging.getLogger(__name__)
        self.rows: dict[Hashable, torch.Tensor] = {}
        self.used_bytes = 0
        self.hits = self.misses = 0
        self._digests: dict[int, str] = {}
        self._layouts: dict[Hashable, torch.memory_format] = {}
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

    def lookup(self, scope: Hashable, items: list[Hashable],
               compute: Callable[[list[int]], torch.Tensor]) -> torch.Tensor:
        """Stacked rows for `items` (within `scope`); `compute(indices)` gives the rows (stacked)
        of the missing ones. The result keeps the memory layout `compute` gives (channels_last
        or not), since the random draws of `randn_like` on it depend on that layout."""
        keys = [(scope, item) for item in items]
        first = {}  # each distinct missing key -> its first index
        for i, k in enumerate(keys):
            if k not in self.rows:
                first.setdefault(k, i)
        fresh: dict[Hashable, torch.Tensor] = {}
        if first:
            rows = compute(list(first.values()))
            self._layouts[scope] = _layout(rows)
            fresh = dict(zip(first, rows))
        self.hits += len(keys) - len(fresh)
        self.misses += len(fresh)
        for k, row in fresh.items():
            self._store(k, row)
        out = torch.stack([fresh[k] if k in fresh else self.rows[k] for k in keys])
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
    def encode_images(self, autoencoder: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """`autoencoder.encode(images)` with the posterior moments of each image memoised."""
        if not hasattr(autoencoder, 'encode_posterior'):
            return autoencoder.encode(images)
        scope = ('latent', self.model_digest(autoencoder), tuple(images.shape[1:]), compute_dtype(autoencoder))

        def moments(indices: list[int]) -> torch.Tensor:
            posterior = autoencoder.encode_posterior(images[indices])
            return torch.cat([posterior.mean, posterior.logvar], dim=1)
        on_cpu = images.detach().cpu()  # one transfer for the batch, not one per image
        posterior = DiagonalGaussian(self.lookup(scope, [tensor_digest(x) for x in on_cpu], moments))
        return posterior.mode() if autoencoder.cfg.USE_MODE else posterior.sample()

    def encode_texts(self, embedder: nn.Module | None, prompts: list[str],
                     encode: Callable[[list[str]], Any]) -> Any:
        """`encode(prompts)`, memoised per prompt while `embedder` is frozen."""
        if embedder is None or any(p.requires_grad for p in embedder.parameters()):
            return encode(prompts)  # a text encoder that trains changes at every step
        scope = ('text', self.model_digest(embedder), compute_dtype(embedder))
        return self.lookup(scope, list(prompts), lambda idx: encode([prompts[i] for i in idx]))


def enable_latent_cache(model: nn.Module, max_mb: float, logger: logging.Logger) -> LatentCache | None:
    """Give `model` (a LatentDiffusion) a cache; models that encode no latents are left alone."""
    if not hasattr(model, 'latent_cache'):
        logger.warning(f'SOLVER.CACHE_LATENTS: {type(model).__name__} encodes no latents; ignored')
        return None
    model.latent_cache = LatentCache(max_mb, logger)
    logger.info(f'CACHE_LATENTS: latents and frozen text embeddings cached (up to {max_mb} MB)')
    return model.latent_cache

"""AutoencoderKL: the Stable Diffusion VAE (encoder, Gaussian posterior, decoder)."""
from __future__ import annotations

import contextlib
import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn import Conv2d

from ...config import Config
from ...registry import BACKBONES, MODELS
from ..base import TrainModule
from .distributions import DiagonalGaussian


FULL_SIZE_PIXELS = 512 * 512  # BATCH_SIZE counts images of this size (SD1.5's)


@MODELS.register_class()
class AutoencoderKL(TrainModule):
    """Image <-> latent with a KL-regularised Gaussian posterior (SD1.5: 83,653,863 parameters).
    `encode` returns unscaled latents; the latent-diffusion model applies its scale factor."""

    para_dict = {
        'ENCODER': {'value': {'NAME': 'Encoder'}, 'registry': 'BACKBONES', 'description': 'Encoder block.'},
        'DECODER': {'value': {'NAME': 'Decoder'}, 'registry': 'BACKBONES', 'description': 'Decoder block.'},
        'EMBED_DIM': {'value': 4, 'description': 'Latent channels after quant_conv.'},
        'PRETRAINED_MODEL': {'value': None, 'type': str, 'description':
                             'Weights with LDM names, with or without the first_stage_model. prefix '
                             "(Scepter's conv1/conv2 names for quant_conv/post_quant_conv are accepted)."},
        'IGNORE_KEYS': {'value': [], 'type': (list, str), 'description': 'Names (prefix removed) to skip when loading: '
                        'literal prefixes, or regexes when they use regex syntax (one, or a list).'},
        'BATCH_SIZE': {'value': 4, 'description': 'Micro-batch of encode/decode, to cap activation memory: this '
                       'many images of 512x512 or more at a time; smaller images go proportionally more at once.'},
        'USE_MODE': {'value': False, 'description': 'encode() returns the posterior mean instead of a sample.'},
        'KL_WEIGHT': {'value': 1e-6, 'description': 'Weight of the KL term in training (LDM convention).'},
        'REC_LOSS': {'value': 'l1', 'choices': ('l1', 'l2'), 'description': 'Reconstruction loss.'},
        'TILE_SIZE': {'value': None, 'type': int, 'description':
                      'Decode latents larger than this (in latent pixels) in overlapping tiles; null = whole.'},
        'USE_CONV': {'value': True, 'description': 'quant_conv / post_quant_conv 1x1 layers (SD1/2/XL have them; '
                                                   "the 16-channel FLUX / SD3 VAE does not)."},
    }

    def __init__(self, cfg: Config | dict | None = None, logger: logging.Logger | None = None):
        super().__init__(cfg, logger=logger)
        c = self.cfg
        # With pretrained weights, build on meta: the checkpoint's tensors become the parameters.
        with torch.device('meta') if c.PRETRAINED_MODEL else contextlib.nullcontext():
            self.encoder = BACKBONES.build(c.ENCODER, logger=self.logger)
            self.decoder = BACKBONES.build(c.DECODER, logger=self.logger)
            z = self.encoder.cfg.Z_CHANNELS
            if c.USE_CONV:
                self.quant_conv = Conv2d(2 * z, 2 * c.EMBED_DIM, 1)
                self.post_quant_conv = Conv2d(c.EMBED_DIM, self.decoder.cfg.Z_CHANNELS, 1)
            else:
                self.quant_conv, self.post_quant_conv = nn.Identity(), nn.Identity()
        self.downscale = 2 ** (len(self.decoder.cfg.CH_MULT) - 1)
        if c.PRETRAINED_MODEL:
            self.load_pretrained_model(c.PRETRAINED_MODEL)

    def load_pretrained_model(self, path: str) -> None:
        from ...checkpoint import load_component
        from ...convert.vae_map import rename_scepter_vae_keys
        ignore = [self.cfg.IGNORE_KEYS] if isinstance(self.cfg.IGNORE_KEYS, str) else self.cfg.IGNORE_KEYS
        load_component(self, path, ('first_stage_model.',), ignore, self.logger,
                       rename=rename_scepter_vae_keys)

    # ---- encode / decode ---------------------------------------------------------------
    def encode_posterior(self, x: torch.Tensor) -> DiagonalGaussian:
        """q(z|x) for images in [-1, 1], computed a micro-batch at a time (see `micro_batch`)."""
        chunk = self.micro_batch(x.shape[-2] * x.shape[-1])
        moments = torch.cat([self.quant_conv(self.encoder(xb)) for xb in x.split(chunk)])
        return DiagonalGaussian(moments)

    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Unscaled latents: a posterior sample, or its mean when USE_MODE."""
        posterior = self.encode_posterior(x)
        return posterior.mode() if self.cfg.USE_MODE else posterior.sample(generator)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images (about [-1, 1]) from unscaled latents, a micro-batch at a time, tiled if asked."""
        tile = self.cfg.TILE_SIZE
        run = self._decode_tiled if tile and max(z.shape[-2:]) > tile else self._decode
        chunk = self.micro_batch(z.shape[-2] * z.shape[-1] * self.downscale ** 2)
        return torch.cat([run(zb) for zb in z.split(chunk)])

    def micro_batch(self, pixels: int) -> int:
        """Images per encode/decode call for images of `pixels` pixels: BATCH_SIZE at 512x512 and
        above (Scepter's meaning), and as many as hold the same pixel count below it. Activation
        memory grows with pixels, so the cap stays; small images (32 px: 256x as many) skip the
        per-call cost of many small convolutions."""
        n = max(int(self.cfg.BATCH_SIZE), 1)
        return max(n, n * FULL_SIZE_PIXELS // max(pixels, 1))

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z))

    def _decode_tiled(self, z: torch.Tensor) -> torch.Tensor:
        """Decode overlapping TILE_SIZE tiles and cross-fade their overlaps (memory ~ one tile)."""
        size = self.cfg.TILE_SIZE
        overlap = max(size // 4, 1)
        stride = size - overlap
        rows = [[self._decode(z[:, :, i:i + size, j:j + size]) for j in range(0, z.shape[3], stride)]
                for i in range(0, z.shape[2], stride)]
        fade, keep = overlap * self.downscale, stride * self.downscale
        out_rows = []
        for i, row in enumerate(rows):
            tiles = []
            for j, tile in enumerate(row):
                if i:
                    tile = _cross_fade(rows[i - 1][j], tile, fade, dim=2)
                if j:
                    tile = _cross_fade(row[j - 1], tile, fade, dim=3)
                tiles.append(tile[:, :, :keep, :keep])
            out_rows.append(torch.cat(tiles, dim=3))
        return torch.cat(out_rows, dim=2)

    # ---- training / testing ------------------------------------------------------------
    def forward_train(self, image: torch.Tensor | None = None, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Reconstruction + KL_WEIGHT * KL. Both terms are per image pixel: the total equals the
        LDM loss (sums over pixels and latents, mean over the batch) divided by the pixel count."""
        posterior = self.encode_posterior(image)
        rec = self.decode(posterior.sample())
        pixels = image[0].numel()
        rec_fn = F.l1_loss if self.cfg.REC_LOSS == 'l1' else F.mse_loss
        rec_loss = rec_fn(rec.float(), image.float())
        kl_loss = posterior.kl().float().mean() / pixels
        loss = rec_loss + self.cfg.KL_WEIGHT * kl_loss
        return {'loss': loss, 'rec_loss': rec_loss.detach(), 'kl_loss': kl_loss.detach()}

    @torch.no_grad()
    def forward_test(self, image: torch.Tensor | None = None, **kwargs: Any) -> list[dict[str, torch.Tensor]]:
        """Reconstructions of `image` from the posterior mean, one dict per image with
        'image' in [0, 1] and its 'latent'."""
        z = self.encode_posterior(image).mode()
        rec = ((self.decode(z).float() + 1.0) / 2.0).clamp(0.0, 1.0)
        return [{'image': r, 'latent': zi} for r, zi in zip(rec, z)]


@MODELS.register_class()
class AutoencoderKLFlux(AutoencoderKL):
    """The 16-channel VAE of FLUX.1 and SD3 (83,819,683 parameters): no quant convs, and a
    latent shift besides the scale; the diffusion sees (z - SHIFT_FACTOR) * SCALE_FACTOR."""

    para_dict = {
        'ENCODER': {'value': {'NAME': 'Encoder', 'Z_CHANNELS': 16}, 'registry': 'BACKBONES', 'description':
                    'Encoder block (16 latent channels).'},
        'DECODER': {'value': {'NAME': 'Decoder', 'Z_CHANNELS': 16}, 'registry': 'BACKBONES', 'description':
                    'Decoder block (16 latent channels).'},
        'EMBED_DIM': {'value': 16, 'description': 'Latent channels.'},
        'USE_CONV': {'value': False, 'description': 'quant_conv / post_quant_conv (absent in this VAE).'},
        'SCALE_FACTOR': {'value': 0.3611, 'description': 'Latent scale (FLUX 0.3611, SD3 1.5305).'},
        'SHIFT_FACTOR': {'value': 0.1159, 'description': 'Latent shift (FLUX 0.1159, SD3 0.0609).'},
    }

    def to_diffusion(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.cfg.SHIFT_FACTOR) * self.cfg.SCALE_FACTOR

    def from_diffusion(self, z: torch.Tensor) -> torch.Tensor:
        return z / self.cfg.SCALE_FACTOR + self.cfg.SHIFT_FACTOR


def _cross_fade(prev: torch.Tensor, tile: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """Blend the first `width` rows/columns of `tile` with the last ones of `prev`."""
    width = min(width, prev.shape[dim], tile.shape[dim])
    if width <= 0:
        return tile
    shape = [1, 1, 1, 1]
    shape[dim] = width
    w = torch.linspace(0.0, 1.0, width + 2, device=tile.device, dtype=tile.dtype)[1:-1].reshape(shape)
    head = tile.narrow(dim, 0, width) * w + prev.narrow(dim, prev.shape[dim] - width, width) * (1 - w)
    return torch.cat([head, tile.narrow(dim, width, tile.shape[dim] - width)], dim=dim)

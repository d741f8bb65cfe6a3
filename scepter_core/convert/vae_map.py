"""VAE key table: our (original LDM) names <-> diffusers `AutoencoderKL` names, plus the
original Scepter toolkit's own spelling of two top-level convolutions."""
from __future__ import annotations

from typing import Mapping

import torch

from .configs import filled_vae_cfg
from .keymap import KeyMap, Pairs

ATTN_LEAVES = (('norm', 'group_norm'), ('q', 'to_q'), ('k', 'to_k'), ('v', 'to_v'), ('proj_out', 'to_out.0'))
# Diffusers files written before its attention refactor.
LEGACY_ATTN_LEAVES = (('q', 'query'), ('k', 'key'), ('v', 'value'), ('proj_out', 'proj_attn'))
# Scepter's AutoencoderKL calls quant_conv / post_quant_conv `conv1` / `conv2`.
SCEPTER_VAE_NAMES = (('quant_conv', 'conv1'), ('post_quant_conv', 'conv2'))


def _resnet(ours: str, theirs: str) -> Pairs:
    return [(ours, theirs), (f'{ours}.nin_shortcut', f'{theirs}.conv_shortcut')]


def _middle(ours: str, theirs: str) -> Pairs:
    pairs = _resnet(f'{ours}.block_1', f'{theirs}.resnets.0') + _resnet(f'{ours}.block_2', f'{theirs}.resnets.1')
    return pairs + [(f'{ours}.attn_1.{o}', f'{theirs}.attentions.0.{t}') for o, t in ATTN_LEAVES]


def vae_pairs(cfg: Mapping | None = None) -> Pairs:
    """(ours, diffusers) module prefixes for every parameterised module of the VAE."""
    c = filled_vae_cfg(cfg)
    enc, dec = c.ENCODER, c.DECODER
    pairs: Pairs = [('quant_conv', 'quant_conv'), ('post_quant_conv', 'post_quant_conv'),
                    ('encoder.conv_in', 'encoder.conv_in'), ('encoder.norm_out', 'encoder.conv_norm_out'),
                    ('encoder.conv_out', 'encoder.conv_out'), ('decoder.conv_in', 'decoder.conv_in'),
                    ('decoder.norm_out', 'decoder.conv_norm_out'), ('decoder.conv_out', 'decoder.conv_out')]
    levels = len(enc.CH_MULT)
    for i in range(levels):
        pairs += [p for j in range(enc.NUM_RES_BLOCKS)
                  for p in _resnet(f'encoder.down.{i}.block.{j}', f'encoder.down_blocks.{i}.resnets.{j}')]
        if i != levels - 1:
            pairs.append((f'encoder.down.{i}.downsample.conv', f'encoder.down_blocks.{i}.downsamplers.0.conv'))
    levels = len(dec.CH_MULT)
    for i in range(levels):
        up = levels - 1 - i
        pairs += [p for j in range(dec.NUM_RES_BLOCKS + 1)
                  for p in _resnet(f'decoder.up.{i}.block.{j}', f'decoder.up_blocks.{up}.resnets.{j}')]
        if i:
            pairs.append((f'decoder.up.{i}.upsample.conv', f'decoder.up_blocks.{up}.upsamplers.0.conv'))
    return pairs + _middle('encoder.mid', 'encoder.mid_block') + _middle('decoder.mid', 'decoder.mid_block')


def vae_keymap(cfg: Mapping | None = None) -> KeyMap:
    convs = [f'{part}.mid.attn_1.{leaf}' for part in ('encoder', 'decoder') for leaf in ('q', 'k', 'v', 'proj_out')]
    legacy = [(f'{part}.mid.attn_1.{o}', f'{part}.mid_block.attentions.0.{t}')
              for part in ('encoder', 'decoder') for o, t in LEGACY_ATTN_LEAVES]
    return KeyMap(vae_pairs(cfg), linear_as_conv=convs, extra_theirs=legacy, name='VAE')


def rename_scepter_vae_keys(sd: Mapping[str, torch.Tensor], prefix: str = '') -> dict[str, torch.Tensor]:
    """Scepter's top-level `conv1.*` / `conv2.*` (under `prefix`) -> `quant_conv.*` / `post_quant_conv.*`."""
    out = {}
    for key, value in sd.items():
        for ours, theirs in SCEPTER_VAE_NAMES:
            if key.startswith(f'{prefix}{theirs}.'):
                key = f'{prefix}{ours}.' + key[len(prefix) + len(theirs) + 1:]
                break
        out[key] = value
    return out

"""UNet key table: our (original LDM) names <-> diffusers `UNet2DConditionModel` names,
generated from the architecture config."""
from __future__ import annotations

from typing import Mapping

from ..errors import ConfigError
from .configs import attention_levels
from .configs import filled_unet_cfg, per_level
from .keymap import KeyMap, Pairs

RESBLOCK_LEAVES = (('in_layers.0', 'norm1'), ('in_layers.2', 'conv1'), ('emb_layers.1', 'time_emb_proj'),
                   ('out_layers.0', 'norm2'), ('out_layers.3', 'conv2'), ('skip_connection', 'conv_shortcut'))


def _resblock(ours: str, theirs: str) -> Pairs:
    return [(f'{ours}.{o}', f'{theirs}.{t}') for o, t in RESBLOCK_LEAVES]


def unet_pairs(cfg: Mapping | None = None) -> Pairs:
    """(ours, diffusers) module prefixes for every parameterised module of the UNet."""
    c = filled_unet_cfg(cfg)
    if c.RESBLOCK_UPDOWN:
        raise ConfigError('DiffusionUNet: RESBLOCK_UPDOWN has no diffusers UNet2DConditionModel counterpart')
    levels = len(c.CHANNEL_MULT)
    blocks = per_level(c.NUM_RES_BLOCKS, levels)
    attn = attention_levels(c)
    pairs: Pairs = [('time_embed.0', 'time_embedding.linear_1'), ('time_embed.2', 'time_embedding.linear_2'),
                    ('input_blocks.0.0', 'conv_in'), ('out.0', 'conv_norm_out'), ('out.2', 'conv_out')]
    if isinstance(c.NUM_CLASSES, int):
        pairs.append(('label_emb', 'class_embedding'))
    elif c.NUM_CLASSES == 'sequential':
        pairs += [('label_emb.0.0', 'add_embedding.linear_1'), ('label_emb.0.2', 'add_embedding.linear_2')]
    idx = 1
    for level in range(levels):
        for j in range(blocks[level]):
            pairs += _resblock(f'input_blocks.{idx}.0', f'down_blocks.{level}.resnets.{j}')
            if attn[level]:
                pairs.append((f'input_blocks.{idx}.1', f'down_blocks.{level}.attentions.{j}'))
            idx += 1
        if level != levels - 1:
            pairs.append((f'input_blocks.{idx}.0.op', f'down_blocks.{level}.downsamplers.0.conv'))
            idx += 1
    pairs += _resblock('middle_block.0', 'mid_block.resnets.0')
    pairs.append(('middle_block.1', 'mid_block.attentions.0'))
    pairs += _resblock('middle_block.2', 'mid_block.resnets.1')
    idx = 0
    for up, level in enumerate(reversed(range(levels))):
        for i in range(blocks[level] + 1):
            pairs += _resblock(f'output_blocks.{idx}.0', f'up_blocks.{up}.resnets.{i}')
            if attn[level]:
                pairs.append((f'output_blocks.{idx}.1', f'up_blocks.{up}.attentions.{i}'))
            if level and i == blocks[level]:
                pairs.append((f'output_blocks.{idx}.{2 if attn[level] else 1}.conv', f'up_blocks.{up}.upsamplers.0.conv'))
            idx += 1
    return pairs


def unet_keymap(cfg: Mapping | None = None) -> KeyMap:
    return KeyMap(unet_pairs(cfg), name='UNet')

"""SD3 / SD3.5 MMDiT keys: ours (= Stability AI's single files) <-> diffusers'
SD3Transformer2DModel (see fused_map.py). The last block's context stream and the final
layer keep only a shift/scale modulation, stored in the other order by diffusers."""
from __future__ import annotations

from typing import Mapping

import torch

from .fused_map import Entry, Tensors, block_indices, rename, split, swap, to_ours, to_theirs

TOP = [rename('pos_embed', 'pos_embed.pos_embed'), rename('x_embedder.proj', 'pos_embed.proj'),
       rename('t_embedder.mlp.0', 'time_text_embed.timestep_embedder.linear_1'),
       rename('t_embedder.mlp.2', 'time_text_embed.timestep_embedder.linear_2'),
       rename('y_embedder.mlp.0', 'time_text_embed.text_embedder.linear_1'),
       rename('y_embedder.mlp.2', 'time_text_embed.text_embedder.linear_2'),
       rename('context_embedder', 'context_embedder'),
       rename('final_layer.linear', 'proj_out'), swap('final_layer.adaLN_modulation.1', 'norm_out.linear')]
# (our stream, our layer, diffusers layer) inside joint block i
STREAMS = [('x_block', 'attn.ln_q', 'attn.norm_q'), ('x_block', 'attn.ln_k', 'attn.norm_k'),
           ('x_block', 'attn.proj', 'attn.to_out.0'), ('x_block', 'mlp.fc1', 'ff.net.0.proj'),
           ('x_block', 'mlp.fc2', 'ff.net.2'), ('x_block', 'adaLN_modulation.1', 'norm1.linear'),
           ('x_block', 'attn2.ln_q', 'attn2.norm_q'), ('x_block', 'attn2.ln_k', 'attn2.norm_k'),
           ('x_block', 'attn2.proj', 'attn2.to_out.0'),
           ('context_block', 'attn.ln_q', 'attn.norm_added_q'), ('context_block', 'attn.ln_k', 'attn.norm_added_k'),
           ('context_block', 'attn.proj', 'attn.to_add_out'), ('context_block', 'mlp.fc1', 'ff_context.net.0.proj'),
           ('context_block', 'mlp.fc2', 'ff_context.net.2')]
QKV = [('x_block', 'attn.qkv', ('attn.to_q', 'attn.to_k', 'attn.to_v')),
       ('x_block', 'attn2.qkv', ('attn2.to_q', 'attn2.to_k', 'attn2.to_v')),
       ('context_block', 'attn.qkv', ('attn.add_q_proj', 'attn.add_k_proj', 'attn.add_v_proj'))]


def mmdit_entries(keys) -> list[Entry]:
    entries = list(TOP)
    blocks = block_indices(keys, 'joint_blocks', 'transformer_blocks')
    for i in blocks:
        o, t = f'joint_blocks.{i}.', f'transformer_blocks.{i}.'
        entries += [rename(f'{o}{s}.{a}', t + b) for s, a, b in STREAMS]
        entries += [split(f'{o}{s}.{a}', tuple(t + p for p in b)) for s, a, b in QKV]
        last = i == blocks[-1]  # pre-only context: AdaLayerNormContinuous (scale, shift) in diffusers
        entries.append((swap if last else rename)(f'{o}context_block.adaLN_modulation.1', t + 'norm1_context.linear'))
    return entries


def mmdit_to_diffusers(sd: Mapping[str, torch.Tensor]) -> Tensors:
    """Our / Stability state dict -> diffusers' SD3Transformer2DModel names."""
    return to_theirs(sd, mmdit_entries(sd), 'MMDiT')


def mmdit_from_diffusers(sd: Mapping[str, torch.Tensor]) -> Tensors:
    """diffusers' SD3Transformer2DModel state dict -> our / Stability names."""
    return to_ours(sd, mmdit_entries(sd), 'MMDiT')

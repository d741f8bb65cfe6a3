"""FLUX transformer keys: ours (= Black Forest Labs' single files) <-> diffusers'
FluxTransformer2DModel (see fused_map.py). The final modulation's halves swap (BFL:
shift, scale; diffusers' AdaLayerNormContinuous: scale, shift)."""
from __future__ import annotations

from typing import Mapping

import torch

from .fused_map import Entry, Tensors, block_indices, rename, split, swap, to_ours, to_theirs

TOP = [rename('img_in', 'x_embedder'), rename('txt_in', 'context_embedder'),
       rename('time_in.in_layer', 'time_text_embed.timestep_embedder.linear_1'),
       rename('time_in.out_layer', 'time_text_embed.timestep_embedder.linear_2'),
       rename('vector_in.in_layer', 'time_text_embed.text_embedder.linear_1'),
       rename('vector_in.out_layer', 'time_text_embed.text_embedder.linear_2'),
       rename('guidance_in.in_layer', 'time_text_embed.guidance_embedder.linear_1'),
       rename('guidance_in.out_layer', 'time_text_embed.guidance_embedder.linear_2'),
       rename('final_layer.linear', 'proj_out'), swap('final_layer.adaLN_modulation.1', 'norm_out.linear')]
DOUBLE = [('img_mod.lin', 'norm1.linear'), ('txt_mod.lin', 'norm1_context.linear'),
          ('img_attn.norm.query_norm.scale', 'attn.norm_q.weight'), ('img_attn.norm.key_norm.scale', 'attn.norm_k.weight'),
          ('txt_attn.norm.query_norm.scale', 'attn.norm_added_q.weight'),
          ('txt_attn.norm.key_norm.scale', 'attn.norm_added_k.weight'),
          ('img_attn.proj', 'attn.to_out.0'), ('txt_attn.proj', 'attn.to_add_out'),
          ('img_mlp.0', 'ff.net.0.proj'), ('img_mlp.2', 'ff.net.2'),
          ('txt_mlp.0', 'ff_context.net.0.proj'), ('txt_mlp.2', 'ff_context.net.2')]
SINGLE = [('modulation.lin', 'norm.linear'), ('linear2', 'proj_out'),
          ('norm.query_norm.scale', 'attn.norm_q.weight'), ('norm.key_norm.scale', 'attn.norm_k.weight')]


def _linear1_sizes(shape: torch.Size) -> list[int]:
    """linear1 is [3 D + mlp, D]: q, k, v of D rows each, then the MLP input."""
    return [shape[1]] * 3 + [shape[0] - 3 * shape[1]]


def flux_entries(keys) -> list[Entry]:
    entries = list(TOP)
    for i in block_indices(keys, 'double_blocks', 'transformer_blocks'):
        o, t = f'double_blocks.{i}.', f'transformer_blocks.{i}.'
        entries += [rename(o + a, t + b) for a, b in DOUBLE]
        entries += [split(o + 'img_attn.qkv', (t + 'attn.to_q', t + 'attn.to_k', t + 'attn.to_v')),
                    split(o + 'txt_attn.qkv', (t + 'attn.add_q_proj', t + 'attn.add_k_proj', t + 'attn.add_v_proj'))]
    for i in block_indices(keys, 'single_blocks', 'single_transformer_blocks'):
        o, t = f'single_blocks.{i}.', f'single_transformer_blocks.{i}.'
        entries += [rename(o + a, t + b) for a, b in SINGLE]
        entries.append(split(o + 'linear1', tuple(t + p for p in ('attn.to_q', 'attn.to_k', 'attn.to_v', 'proj_mlp')),
                             _linear1_sizes))
    return entries


def flux_to_diffusers(sd: Mapping[str, torch.Tensor]) -> Tensors:
    """Our / BFL state dict -> diffusers' FluxTransformer2DModel names."""
    return to_theirs(sd, flux_entries(sd), 'FLUX')


def flux_from_diffusers(sd: Mapping[str, torch.Tensor]) -> Tensors:
    """diffusers' FluxTransformer2DModel state dict -> our / BFL names."""
    return to_ours(sd, flux_entries(sd), 'FLUX')

"""FLUX transformer keys: ours (= Black Forest Labs' single files) <-> diffusers'
FluxTransformer2DModel. Fused tensors split and join on the way (qkv -> to_q/to_k/to_v,
a single block's linear1 -> q/k/v + proj_mlp), and the final modulation's two halves swap
(BFL: shift, scale; diffusers' AdaLayerNormContinuous: scale, shift). Values are never
changed, so a round trip is bit-exact."""
from __future__ import annotations

import re
from typing import Mapping

import torch

from ..errors import CheckpointError

Tensors = dict[str, torch.Tensor]
# (ours, diffusers) for layers that only rename; {} stands for a block index.
PLAIN = [
    ('img_in', 'x_embedder'), ('txt_in', 'context_embedder'),
    ('time_in.in_layer', 'time_text_embed.timestep_embedder.linear_1'),
    ('time_in.out_layer', 'time_text_embed.timestep_embedder.linear_2'),
    ('vector_in.in_layer', 'time_text_embed.text_embedder.linear_1'),
    ('vector_in.out_layer', 'time_text_embed.text_embedder.linear_2'),
    ('guidance_in.in_layer', 'time_text_embed.guidance_embedder.linear_1'),
    ('guidance_in.out_layer', 'time_text_embed.guidance_embedder.linear_2'),
    ('final_layer.linear', 'proj_out'),
]
DOUBLE = [
    ('img_mod.lin', 'norm1.linear'), ('txt_mod.lin', 'norm1_context.linear'),
    ('img_attn.norm.query_norm.scale', 'attn.norm_q.weight'), ('img_attn.norm.key_norm.scale', 'attn.norm_k.weight'),
    ('txt_attn.norm.query_norm.scale', 'attn.norm_added_q.weight'),
    ('txt_attn.norm.key_norm.scale', 'attn.norm_added_k.weight'),
    ('img_attn.proj', 'attn.to_out.0'), ('txt_attn.proj', 'attn.to_add_out'),
    ('img_mlp.0', 'ff.net.0.proj'), ('img_mlp.2', 'ff.net.2'),
    ('txt_mlp.0', 'ff_context.net.0.proj'), ('txt_mlp.2', 'ff_context.net.2'),
]
SINGLE = [
    ('modulation.lin', 'norm.linear'), ('linear2', 'proj_out'),
    ('norm.query_norm.scale', 'attn.norm_q.weight'), ('norm.key_norm.scale', 'attn.norm_k.weight'),
]
# fused ours -> the diffusers pieces it splits into, along dim 0
DOUBLE_FUSED = {'img_attn.qkv': ('attn.to_q', 'attn.to_k', 'attn.to_v'),
                'txt_attn.qkv': ('attn.add_q_proj', 'attn.add_k_proj', 'attn.add_v_proj')}
SINGLE_FUSED = {'linear1': ('attn.to_q', 'attn.to_k', 'attn.to_v', 'proj_mlp')}


def _rename(name: str, pairs: list[tuple[str, str]], forward: bool) -> str | None:
    for ours, theirs in pairs:
        src, dst = (ours, theirs) if forward else (theirs, ours)
        if name == src or name.startswith(src + '.'):
            return dst + name[len(src):]
    return None


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def flux_to_diffusers(sd: Mapping[str, torch.Tensor]) -> Tensors:
    """Our / BFL state dict -> diffusers' FluxTransformer2DModel names."""
    out: Tensors = {}
    for key, value in sd.items():
        m = re.match(r'(double|single)_blocks\.(\d+)\.(.+)$', key)
        if m is None:
            if key.startswith('final_layer.adaLN_modulation.1.'):
                out['norm_out.linear.' + key.rsplit('.', 1)[1]] = _swap_halves(value)
                continue
            new = _rename(key, PLAIN, True)
        else:
            kind, idx, rest = m.groups()
            head = f'transformer_blocks.{idx}.' if kind == 'double' else f'single_transformer_blocks.{idx}.'
            fused = DOUBLE_FUSED if kind == 'double' else SINGLE_FUSED
            layer, _, leaf = rest.rpartition('.')
            if layer in fused:
                if kind == 'single':  # q, k, v of HIDDEN_SIZE each, then the MLP input
                    hidden = sd[f'single_blocks.{idx}.linear2.weight'].shape[0]
                    sizes = [hidden] * 3 + [value.shape[0] - 3 * hidden]
                else:
                    sizes = [value.shape[0] // 3] * 3
                for piece, part in zip(fused[layer], value.split(sizes, dim=0)):
                    out[f'{head}{piece}.{leaf}'] = part.clone()
                continue
            new = _rename(rest, DOUBLE if kind == 'double' else SINGLE, True)
            new = None if new is None else head + new
        if new is None:
            raise CheckpointError(f"FLUX key '{key}' has no diffusers name")
        out[new] = value
    return out


def flux_from_diffusers(sd: Mapping[str, torch.Tensor]) -> Tensors:
    """diffusers' FluxTransformer2DModel state dict -> our / BFL names."""
    out: Tensors = {}
    pending: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        m = re.match(r'(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.+)$', key)
        if m is None:
            if key.startswith('norm_out.linear.'):
                out['final_layer.adaLN_modulation.1.' + key.rsplit('.', 1)[1]] = _swap_halves(value)
                continue
            new = _rename(key, PLAIN, False)
        else:
            kind, idx, rest = m.groups()
            ours_kind = 'double' if kind == 'transformer_blocks' else 'single'
            fused = DOUBLE_FUSED if ours_kind == 'double' else SINGLE_FUSED
            layer, _, leaf = rest.rpartition('.')
            target = next((f for f, pieces in fused.items() if layer in pieces), None)
            if target is not None:
                pending.setdefault(f'{ours_kind}_blocks.{idx}.{target}.{leaf}', {})[layer] = value
                continue
            new = _rename(rest, DOUBLE if ours_kind == 'double' else SINGLE, False)
            new = None if new is None else f'{ours_kind}_blocks.{idx}.{new}'
        if new is None:
            raise CheckpointError(f"diffusers FLUX key '{key}' has no FLUX name")
        out[new] = value
    for name, parts in pending.items():
        layer = name.split('.', 2)[2].rpartition('.')[0]
        pieces = (DOUBLE_FUSED if name.startswith('double') else SINGLE_FUSED)[layer]
        missing = [p for p in pieces if p not in parts]
        if missing:
            raise CheckpointError(f"diffusers FLUX checkpoint lacks {', '.join(missing)} for '{name}'")
        out[name] = torch.cat([parts[p] for p in pieces], dim=0)
    return out

"""LoRA adapters of the flow transformers in diffusers' names, through the same key tables as
their weights (convert/flux_map.py, mmdit_map.py): a fused layer of ours (`img_attn.qkv`,
FLUX's `linear1`) is several layers in diffusers (`attn.to_q` / `to_k` / `to_v` [/ `proj_mlp`]).

Out: the pieces share our A and each takes its rows of B (exact: B_i A x is that piece's
output). In: pieces that share A (what we write) fuse back to one adapter of the same rank, bit
for bit; pieces with their own A (a LoRA trained by diffusers' scripts) fuse into one adapter of
the summed rank, A stacked and B block-diagonal with each piece's alpha / rank folded into its
block; a piece the file does not adapt contributes zero rows. Halves that the table swaps
(the final modulation) swap in B as well."""
from __future__ import annotations

import torch
from torch import nn

from ..convert.fused_map import Entry, halves_swapped
from ..errors import CheckpointError
from .state import ModuleLora


def backbone_entries(backbone: nn.Module) -> dict[str, Entry]:
    """Our module name -> its table entry, for a Flux or MMDiT backbone."""
    from ..convert.flux_map import flux_entries
    from ..convert.mmdit_map import mmdit_entries
    from ..registry import BACKBONES
    entries = {'Flux': flux_entries, 'MMDiT': mmdit_entries}[BACKBONES.name_of(type(backbone))]
    return {e.ours: e for e in entries(backbone.state_dict().keys())}


def _shape(e: ModuleLora) -> torch.Size:
    """The adapted layer's weight shape [out, in]."""
    return torch.Size((e.up.shape[0], e.down.shape[1]))


def split_lora(entry: Entry, e: ModuleLora) -> dict[str, ModuleLora]:
    """Our adapter on `entry.ours` -> diffusers module name -> adapter."""
    if entry.kind == 'rename':
        return {entry.theirs[0]: e}
    if entry.kind == 'swap':
        return {entry.theirs[0]: ModuleLora(e.down, halves_swapped(e.up), e.alpha, e.magnitude)}
    if e.magnitude is not None:
        raise CheckpointError(f"'{entry.ours}': a DoRA adapter on a fused layer has no diffusers split")
    ups = e.up.split(entry.sizes(_shape(e)), dim=0)
    return {name: ModuleLora(e.down, up.clone(), e.alpha) for name, up in zip(entry.theirs, ups)}


def fuse_lora(entry: Entry, pieces: dict[str, ModuleLora], shape: torch.Size) -> ModuleLora:
    """diffusers' adapters on the pieces of `entry` -> our adapter on the fused layer of weight
    `shape`."""
    if entry.kind != 'split':
        (e,) = pieces.values()
        return e if entry.kind == 'rename' else ModuleLora(e.down, halves_swapped(e.up), e.alpha, e.magnitude)
    if any(e.magnitude is not None for e in pieces.values()):
        raise CheckpointError(f"'{entry.ours}': DoRA adapters on {', '.join(pieces)} cannot be fused")
    first = next(iter(pieces.values()))
    if len(pieces) == len(entry.theirs) and all(
            torch.equal(e.down, first.down) and e.alpha == first.alpha for e in pieces.values()):
        return ModuleLora(first.down, torch.cat([pieces[n].up for n in entry.theirs]), first.alpha)
    sizes = entry.sizes(shape)
    rank = sum(e.rank for e in pieces.values())
    up = first.up.new_zeros(shape[0], rank)
    downs, row, col = [], 0, 0
    for name, size in zip(entry.theirs, sizes):
        e = pieces.get(name)
        if e is not None:
            up[row:row + size, col:col + e.rank] = e.up * (e.alpha / e.rank)
            downs.append(e.down)
            col += e.rank
        row += size
    return ModuleLora(torch.cat(downs), up, float(rank))  # alpha = rank: the scales sit in B

"""Key tables for transformers whose original checkpoints fuse layers that diffusers keeps
apart (qkv -> to_q / to_k / to_v, FLUX's linear1 -> q / k / v / proj_mlp) or store halves
in the other order (adaLN shift/scale). A table lists, for concrete module names, how our
(= the original file's) layer maps onto theirs:

    rename(ours, theirs)             the same tensors under another prefix
    split(ours, (t1, t2, ...), fn)   ours is the concatenation along dim 0; fn(weight shape)
                                     gives the sizes of the pieces
    swap(ours, theirs)               the two halves along dim 0 swap places

Values are never changed, so ours -> theirs -> ours is bit-exact."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch

from ..errors import CheckpointError

Tensors = dict[str, torch.Tensor]
Sizes = Callable[[torch.Size], list[int]]


@dataclass(frozen=True)
class Entry:
    ours: str
    theirs: tuple[str, ...]
    kind: str = 'rename'  # rename | split | swap
    sizes: Sizes | None = None


def rename(ours: str, theirs: str) -> Entry:
    return Entry(ours, (theirs,))


def split(ours: str, theirs: tuple[str, ...], sizes: Sizes | None = None) -> Entry:
    return Entry(ours, tuple(theirs), 'split', sizes or (lambda shape: [shape[0] // len(theirs)] * len(theirs)))


def swap(ours: str, theirs: str) -> Entry:
    return Entry(ours, (theirs,), 'swap')


def halves_swapped(t: torch.Tensor) -> torch.Tensor:
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def _find(table: Mapping[str, Entry], key: str) -> tuple[Entry, str] | None:
    """The entry of the longest dotted prefix of `key`, and the rest of the key."""
    parts = key.split('.')
    for n in range(len(parts), 0, -1):
        entry = table.get('.'.join(parts[:n]))
        if entry is not None:
            return entry, key[len('.'.join(parts[:n])):]
    return None


def to_theirs(sd: Mapping[str, torch.Tensor], entries: list[Entry], what: str) -> Tensors:
    table = {e.ours: e for e in entries}
    out: Tensors = {}
    for key, value in sd.items():
        hit = _find(table, key)
        if hit is None:
            raise CheckpointError(f"{what}: key '{key}' has no diffusers name")
        entry, rest = hit
        if entry.kind == 'split':
            weight = sd.get(entry.ours + '.weight', value)
            for name, piece in zip(entry.theirs, value.split(entry.sizes(weight.shape), dim=0)):
                out[name + rest] = piece.clone()
        else:
            out[entry.theirs[0] + rest] = halves_swapped(value) if entry.kind == 'swap' else value
    return out


def to_ours(sd: Mapping[str, torch.Tensor], entries: list[Entry], what: str) -> Tensors:
    table = {t: e for e in entries for t in e.theirs}
    out: Tensors = {}
    pieces: dict[tuple[Entry, str], dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        hit = _find(table, key)
        if hit is None:
            raise CheckpointError(f"{what}: diffusers key '{key}' has no original name")
        entry, rest = hit
        if entry.kind == 'split':
            pieces.setdefault((entry, rest), {})[key[:len(key) - len(rest)]] = value
        else:
            out[entry.ours + rest] = halves_swapped(value) if entry.kind == 'swap' else value
    for (entry, rest), found in pieces.items():
        missing = [t for t in entry.theirs if t not in found]
        if missing:
            raise CheckpointError(f"{what}: checkpoint lacks {', '.join(m + rest for m in missing)}")
        out[entry.ours + rest] = torch.cat([found[t] for t in entry.theirs], dim=0)
    return out


def block_indices(keys, *patterns: str) -> list[int]:
    """Block numbers seen after any of the dotted `patterns` (e.g. 'double_blocks')."""
    found = set()
    for key in keys:
        for pattern in patterns:
            if key.startswith(pattern + '.'):
                found.add(int(key[len(pattern) + 1:].split('.', 1)[0]))
    return sorted(found)

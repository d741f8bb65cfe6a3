"""A key map is a table of (ours, theirs) module-prefix pairs; a key converts by its longest
dotted prefix found in the table, so one pair covers a whole subtree of identical names."""
from __future__ import annotations

from typing import Iterable, Mapping

import torch

from ..errors import CheckpointError

Pairs = list[tuple[str, str]]


def lookup_prefix(table: Mapping[str, str], key: str) -> tuple[str, str] | None:
    """(converted key, matched prefix) by the longest dotted prefix of `key` in `table`."""
    parts = key.split('.')
    for n in range(len(parts), 0, -1):
        head = '.'.join(parts[:n])
        hit = table.get(head)
        if hit is not None:
            return (hit + key[len(head):]).lstrip('.'), head
    return None


class KeyMap:
    """Two tables built from one list of pairs: ours -> theirs and theirs -> ours.

    `linear_as_conv` names our prefixes whose weights are 1x1 convolutions where theirs are
    Linear layers (reshaped on the way, values untouched). `extra_theirs` adds (ours, theirs)
    pairs read in the theirs -> ours direction only (older spellings of their names)."""

    def __init__(self, pairs: Iterable[tuple[str, str]], linear_as_conv: Iterable[str] = (),
                 extra_theirs: Iterable[tuple[str, str]] = (), name: str = 'weights'):
        pairs = list(pairs)
        self.name = name
        self.to_theirs_table = dict(pairs)
        self.to_ours_table = {t: o for o, t in pairs}
        self.to_ours_table.update({t: o for o, t in extra_theirs})
        self.linear_as_conv = set(linear_as_conv)

    def to_theirs(self, sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self._convert(sd, self.to_theirs_table, to_conv=False)

    def to_ours(self, sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self._convert(sd, self.to_ours_table, to_conv=True)

    def _convert(self, sd: Mapping[str, torch.Tensor], table: Mapping[str, str],
                 to_conv: bool) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        unmapped: list[str] = []
        for key, value in sd.items():
            hit = lookup_prefix(table, key)
            if hit is None:
                unmapped.append(key)
                continue
            new, head = hit
            ours_head = table[head] if to_conv else head
            if ours_head in self.linear_as_conv and new.endswith('weight'):
                value = value[:, :, None, None] if to_conv and value.ndim == 2 else \
                    value.reshape(value.shape[:2]) if not to_conv and value.ndim == 4 else value
            if new in out:
                raise CheckpointError(f"{self.name}: '{key}' and another key both map to '{new}'")
            out[new] = value
        if unmapped:
            raise CheckpointError(f'{self.name}: {len(unmapped)} keys have no counterpart, e.g. '
                                  f'{", ".join(unmapped[:5])}')
        return out

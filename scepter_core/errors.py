"""Error types. Each carries a message meant to be printed as-is in one or two lines."""
from __future__ import annotations

import difflib
from typing import Iterable


class ScepterError(Exception):
    """Base of all errors the CLI prints without a traceback (exit 1)."""

    exit_code = 1


class ConfigError(ScepterError, ValueError):
    """A config file, key, value or override is wrong (exit 2)."""

    exit_code = 2


class RegistryError(ConfigError, KeyError):
    """An unknown or duplicate registry name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ''


class BuildError(ScepterError):
    """A constructor failed; the original exception is chained as __cause__."""


class CheckpointError(ScepterError):
    """A checkpoint cannot be read, is unsafe, or does not fit the model."""


def closest(word: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """Close matches for a misspelled name, case-insensitive."""
    cands = list(candidates)
    lower = {c.lower(): c for c in cands}
    hits = difflib.get_close_matches(word.lower(), list(lower), n=n, cutoff=0.6)
    return [lower[h] for h in hits]


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    hits = closest(word, candidates)
    return f" Did you mean {', '.join(repr(h) for h in hits)}?" if hits else ''

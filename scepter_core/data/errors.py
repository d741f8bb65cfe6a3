"""The error a transform raises for one unreadable sample (the dataset skips it)."""
from __future__ import annotations

from ..errors import ScepterError


class BadSampleError(ScepterError):
    """A sample's file is missing or corrupt; `path` names it. Datasets catch this one
    error to skip the sample, so other failures (bugs, bad configs) still surface."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"cannot read '{path}': {reason}")
        self.path = str(path)
        self.reason = reason

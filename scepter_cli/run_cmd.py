"""`scepter train|test|infer|convert` (filled in by the end-to-end work)."""
from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    return None

"""`scepter convert` (filled in with the checkpoint converters)."""
from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    return None

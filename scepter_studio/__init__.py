"""Scepter Studio: a web UI (Gradio) over the core library: generate, train, data, models.

It holds no ML logic: generation calls scepter_core.inference, training runs `scepter train`
in its own process, models go through the checkpoint and convert helpers (or `scepter convert`).
"""
from .paths import Roots, StudioError

__all__ = ['Roots', 'StudioError']

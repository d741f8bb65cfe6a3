"""Serving the Studio: the page behind the Guard (guard.py), on uvicorn."""
from __future__ import annotations

import logging
from typing import Any

from .app import Studio, build_app
from .guard import DEFAULT_MAX_UPLOAD, Guard, check_bind


def make_asgi(studio: Studio, token: str | None = None, max_upload: int = DEFAULT_MAX_UPLOAD,
              refresh_s: float = 2.0) -> Any:
    """The FastAPI app with the Studio page mounted at / behind the Guard."""
    import gradio as gr
    from fastapi import FastAPI
    demo = build_app(studio, refresh_s).queue(default_concurrency_limit=1)
    app = gr.mount_gradio_app(FastAPI(), demo, path='/', allowed_paths=[str(r) for r in studio.roots.roots],
                              max_file_size=max_upload, ssr_mode=False, footer_links=[])
    return Guard(app, token, max_upload)


def serve(roots: list[str], host: str = '127.0.0.1', port: int = 7860, token: str | None = None,
          max_upload: int = DEFAULT_MAX_UPLOAD, logger: logging.Logger | None = None) -> None:
    """Run the Studio until interrupted."""
    import uvicorn
    check_bind(host, token)
    studio = Studio.create(roots, logger)
    uvicorn.run(make_asgi(studio, token, max_upload), host=host, port=port, log_level='warning')

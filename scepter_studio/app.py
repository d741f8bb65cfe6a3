"""The Studio's parts (roots, generator, runs) and the Gradio page built from its tabs."""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from scepter_core.errors import ScepterError

from .generate import Generator
from .paths import Roots
from .runs import RunManager

EXAMPLES = Path(__file__).resolve().parents[1] / 'examples'
STATE_DIR = '.studio'  # under the first root: outputs, history; hidden from the model scan
RUNS_DIR = 'studio_runs'  # under the first root: one work dir per run (models appear in Generate)


@dataclass
class Studio:
    roots: Roots
    generator: Generator
    runs: RunManager
    logger: logging.Logger

    @classmethod
    def create(cls, roots: list[str], logger: logging.Logger | None = None) -> 'Studio':
        logger = logger or logging.getLogger('scepter.studio')
        r = Roots(roots)
        state = r.first / STATE_DIR
        return cls(r, Generator(r, state / 'outputs', logger), RunManager(r.first / RUNS_DIR), logger)

    @property
    def examples(self) -> list[Path]:
        return sorted(EXAMPLES.glob('*.yaml')) if EXAMPLES.is_dir() else []

    def recipe(self, path: str) -> Path:
        """A recipe under the roots, or one of the shipped examples (read-only)."""
        p = Path(path)
        if p.resolve() in [e.resolve() for e in self.examples]:
            return p.resolve()
        return self.roots.resolve(path)


def friendly(fn: Callable) -> Callable:
    """Library errors become a Gradio message (one line in the page), not a traceback."""
    import gradio as gr

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ScepterError as e:
            raise gr.Error(str(e).splitlines()[0]) from e
    return wrapper


def build_app(studio: Studio, refresh_s: float = 2.0):
    """The Blocks page: Generate, Train, Data and Models tabs."""
    import gradio as gr

    from .tabs import data_tab, generate_tab, models_tab, train_tab
    with gr.Blocks(title='Scepter Studio', analytics_enabled=False) as demo:
        gr.Markdown('## Scepter Studio', elem_id='studio_title')
        with gr.Tab('Generate', elem_id='tab_generate'):
            generate_tab.build(studio, demo)
        with gr.Tab('Train', elem_id='tab_train'):
            train_tab.build(studio, demo, refresh_s)
        with gr.Tab('Data', elem_id='tab_data'):
            data_tab.build(studio)
        with gr.Tab('Models', elem_id='tab_models'):
            models_tab.build(studio)
    return demo

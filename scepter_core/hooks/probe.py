"""ProbeDataHook: every PROB_INTERVAL steps, sample fixed prompts and write a PNG grid with
captions, the single images, `meta.json` and an `index.html` over all probe steps."""
from __future__ import annotations

import html
import json
from pathlib import Path

from ..dist import all_gather
from ..env import we
from ..registry import HOOKS
from ..sample_args import sample_kwargs
from ..utils.images import make_grid, save_png
from .base import PRIORITY, BaseHook, SamplingLoop, TrainLoop


@HOOKS.register_class()
class ProbeDataHook(BaseHook):
    """Visual probes of training progress (rank 0 writes; sampling uses a fixed seed)."""

    default_priority = PRIORITY['PROBE']
    para_dict = {
        'PROB_INTERVAL': {'value': 100, 'description': 'Steps between probes (0: only at the end).'},
        'PROMPTS': {'value': [], 'description': 'Prompts to sample; the first training prompts when empty.'},
        'NUM_SAMPLES': {'value': 4, 'description': 'Prompts taken from training data when PROMPTS is empty.'},
        'SAMPLE_ARGS': {'value': {}, 'description': "Overrides of the solver's SAMPLE_ARGS for probes."},
        'SAVE_LAST': {'value': True, 'description': 'Also probe when training ends.'},
        'SAVE_NAME_PREFIX': {'value': 'step', 'choices': ('step',),
                             'description': "Scepter's name prefix: probes go to probe/step-NNNNNN/."},
        'SAVE_PROBE_PREFIX': {'value': 'image', 'type': str,
                              'description': "Accepted for Scepter's recipes: images are NNN.png beside grid.png."},
    }

    def __init__(self, cfg=None, logger=None):
        super().__init__(cfg, logger)
        self.prompts: list[str] = list(self.cfg.PROMPTS or [])
        self.done: list[int] = []

    def after_iter(self, solver: TrainLoop) -> None:
        st = solver.state
        if not self.prompts:
            probe = st.iter_outputs.get('probe_data', {}) if isinstance(st.iter_outputs, dict) else {}
            self.prompts = list(probe.get('prompt') or [])[: self.cfg.NUM_SAMPLES]
            self.prompts = all_gather(self.prompts)[0]  # every rank probes rank 0's prompts
        if st.is_step_end and self.cfg.PROB_INTERVAL and st.step % self.cfg.PROB_INTERVAL == 0:
            self.probe(solver)

    def after_all_iter(self, solver: TrainLoop) -> None:
        if self.cfg.SAVE_LAST and solver.state.step not in self.done and solver.state.step > 0:
            self.probe(solver)

    def probe(self, solver: TrainLoop) -> None:
        if not self.prompts or not isinstance(solver, SamplingLoop):
            return
        step = solver.state.step
        # every rank samples its share of the prompts; rank 0 gathers them and writes
        outs = solver.generate_on_ranks(self.prompts, **sample_kwargs(self.cfg.SAMPLE_ARGS))
        self.done.append(step)
        if not we.is_main:
            return
        root = solver.work_dir / 'probe'
        out = root / f'step-{step:06d}'
        meta = []
        for i, o in enumerate(outs):
            save_png(o['image'], out / f'{i:03d}.png')
            meta.append({'file': f'{i:03d}.png', 'prompt': o['prompt'], 'n_prompt': o.get('n_prompt', '')})
        make_grid([o['image'] for o in outs], [o['prompt'] for o in outs], ncols=min(len(outs), 4)).save(out / 'grid.png')
        (out / 'meta.json').write_text(json.dumps({'step': step, 'samples': meta,
                                                   'sample_args': solver.sample_args}, indent=1))
        self._write_index(root)

    @staticmethod
    def _write_index(root: Path) -> None:
        rows = []
        for d in sorted(root.glob('step-*'), reverse=True):
            rows.append(f'<h3>{html.escape(d.name)}</h3><img src="{d.name}/grid.png" style="max-width:100%">')
        (root / 'index.html').write_text('<!doctype html><meta charset="utf-8"><title>probes</title>'
                                         '<h1>Probe samples</h1>' + '\n'.join(rows) + '\n')

    def state_dict(self) -> dict:
        return {'prompts': self.prompts}

    def load_state_dict(self, state: dict) -> None:
        self.prompts = list(state.get('prompts') or self.prompts)

"""BucketLogHook: writes WORK_DIR/buckets.json, what a run trained on: for each image size
(bucket), the images the data holds in it (the samples drawn, for data that does not know) and
the batches of that size handed to the model (micro-batches: steps x ACCU_STEP)."""
from __future__ import annotations

import json
from collections import Counter

from ..env import we
from ..registry import HOOKS
from .base import PRIORITY, BaseHook


@HOOKS.register_class()
class BucketLogHook(BaseHook):
    """After training (and with every checkpoint's state): `{"buckets": [{"size": [h, w],
    "count": n, "steps": k}, ...]}`; steps of a resumed run's earlier part are kept."""

    default_priority = PRIORITY['LOG']
    para_dict = {'FILE': {'value': 'buckets.json', 'type': str, 'description': 'File name inside WORK_DIR.'}}

    def __init__(self, cfg=None, logger=None):
        super().__init__(cfg, logger)
        self.earlier: Counter = Counter()  # batches per size before a resume
        self.data = None

    def before_all_iter(self, solver) -> None:
        self.data = solver.datas.get('train')

    def steps(self) -> Counter:
        tally = getattr(self.data, 'tally', None)
        return self.earlier + (tally.sizes if tally is not None else Counter())

    def state_dict(self) -> dict:
        return {'steps': [[list(s), n] for s, n in self.steps().items()]}

    def load_state_dict(self, state: dict) -> None:
        self.earlier = Counter({tuple(s): n for s, n in state.get('steps', [])})

    def after_all_iter(self, solver) -> None:
        if not we.is_main or self.data is None:
            return
        steps = self.steps()
        known = self.data.bucket_counts() if hasattr(self.data, 'bucket_counts') else {}
        drawn = getattr(getattr(self.data, 'tally', None), 'samples', Counter())
        sizes = sorted(set(known) | set(steps))
        rows = [{'size': list(s), 'count': int(known.get(s, drawn.get(s, 0))), 'steps': int(steps.get(s, 0))}
                for s in sizes]
        path = solver.work_dir / self.cfg.FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text('{"buckets": [\n' + ',\n'.join(f'  {json.dumps(r)}' for r in rows) + '\n]}\n')
        self.logger.info(f'buckets: {len(rows)} sizes, {sum(steps.values())} batches -> {path}')

"""TensorboardLogHook: real event files holding the logged scalars at their steps."""
from __future__ import annotations

from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.solvers.tiny_net import train_tiny


def test_scalars_are_written_every_interval_and_at_the_end(tmp_path: Path):
    solver = train_tiny(tmp_path, 5, [{'NAME': 'LogHook', 'LOG_INTERVAL': 1},
                                      {'NAME': 'BackwardHook', 'GRADIENT_CLIP': 10.0},
                                      {'NAME': 'TensorboardLogHook', 'LOG_INTERVAL': 2}])
    events = EventAccumulator(str(tmp_path / 'tensorboard'))
    events.Reload()
    assert {'loss', 'lr', 'grad_norm'} <= set(events.Tags()['scalars'])
    loss = events.Scalars('loss')
    assert [e.step for e in loss] == [2, 4, 5]
    assert loss[-1].value == pytest.approx(solver.state.log_values['loss'], rel=1e-6)

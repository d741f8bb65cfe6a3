"""ReconstructLoss (LOSSES) and the shared elementwise loss."""
from __future__ import annotations

import pytest
import torch

from scepter_core.errors import ConfigError
from scepter_core.registry import LOSSES


def test_reconstruct_loss_types():
    pred, target = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    l2 = LOSSES.build({'NAME': 'ReconstructLoss'})
    torch.testing.assert_close(l2(pred, target), (pred - target) ** 2)
    l1 = LOSSES.build({'NAME': 'ReconstructLoss', 'LOSS_TYPE': 'l1'})
    torch.testing.assert_close(l1(pred, target), (pred - target).abs())
    huber = LOSSES.build({'NAME': 'ReconstructLoss', 'LOSS_TYPE': 'huber', 'HUBER_DELTA': 0.3})
    d = (pred - target).abs()
    quadratic = d <= 0.3
    assert quadratic.any() and not quadratic.all()  # both branches are checked
    torch.testing.assert_close(huber(pred, target), torch.where(quadratic, 0.5 * d ** 2, 0.3 * (d - 0.15)))
    assert l2(pred.half(), target.half()).dtype == torch.float32  # computed in float32


def test_reconstruct_loss_rejects_unknown_type():
    with pytest.raises(ConfigError, match='LOSS_TYPE'):
        LOSSES.build({'NAME': 'ReconstructLoss', 'LOSS_TYPE': 'l3'})
    assert 'LOSS_TYPE: l2' in LOSSES.get('ReconstructLoss').get_config_template()

"""metrics.json and the console table."""
from __future__ import annotations

import json

from rich.console import Console

from scepter_core.metrics import metrics_table, write_metrics_json
from scepter_core.metrics.report import format_value


def test_write_metrics_json_sorted_strict_json(tmp_path):
    path = tmp_path / 'run' / 'metrics.json'
    write_metrics_json(str(path), {'psnr': 31.25, 'fid': 12.5, 'kid_mean': float('nan')})
    text = path.read_text()
    assert json.loads(text) == {'fid': 12.5, 'kid_mean': None, 'psnr': 31.25}
    assert text.index('"fid"') < text.index('"kid_mean"') < text.index('"psnr"')
    assert 'NaN' not in text
    write_metrics_json(str(path), {'fid': 3.0})  # replaced whole, not merged
    assert json.loads(path.read_text()) == {'fid': 3.0}


def test_metrics_table_lists_every_value():
    console = Console(record=True, width=80)
    console.print(metrics_table({'prompt_all_acc': 0.875, 'fid': 12.34567, 'kid_std': 2.5e-06}, title='Test'))
    out = console.export_text()
    assert 'Test' in out
    rows = [line for line in out.splitlines() if any(k in line for k in ('fid', 'prompt_all_acc', 'kid_std'))]
    assert [r.split()[1] for r in rows] == ['fid', 'kid_std', 'prompt_all_acc']  # sorted
    assert '12.3457' in out and '0.8750' in out and '2.5e-06' in out


def test_format_value_keeps_magnitude():
    assert format_value(0.0) == '0.0000'
    assert format_value(1234.5) == '1234.5000'
    assert format_value(3e-7) == '3e-07'
    assert format_value(float('inf')) == 'inf'

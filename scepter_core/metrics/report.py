"""Writing computed metric values: `metrics.json` and a table for the console."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from ..fs import FS

if TYPE_CHECKING:
    from rich.table import Table


def _json_value(value: float) -> float | None:
    # Strict JSON has no NaN or infinity; a value that could not be computed is null.
    return float(value) if math.isfinite(value) else None


def write_metrics_json(path: str, values: Mapping[str, float]) -> None:
    """Write `values` to `path` (local or any FS protocol) as sorted, indented JSON, atomically."""
    data = {key: _json_value(float(values[key])) for key in sorted(values)}
    with FS.put_to(path) as local:
        Path(local).write_text(json.dumps(data, indent=2) + '\n')


def format_value(value: float) -> str:
    """Four significant decimals without hiding small or large magnitudes."""
    if not math.isfinite(value):
        return str(value)
    return f'{value:.4f}' if 1e-3 <= abs(value) < 1e6 or value == 0 else f'{value:.4g}'


def metrics_table(values: Mapping[str, float], title: str = 'Metrics') -> 'Table':
    """A two-column Rich table (metric, value), rows sorted by name."""
    from rich.table import Table
    table = Table(title=title)
    table.add_column('Metric')
    table.add_column('Value', justify='right')
    for key in sorted(values):
        table.add_row(key, format_value(float(values[key])))
    return table

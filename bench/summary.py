"""Markdown tables of every result in bench/results/ (for bench/README.md).

    python bench/summary.py [NAME ...]
"""
from __future__ import annotations

import argparse
import json

from common import RESULTS


def fmt(value: object) -> str:
    if isinstance(value, float):
        return f'{value:.3g}' if abs(value) < 1000 else f'{value:.0f}'
    return str(value)


def table(data: dict) -> str:
    rows = data['rows']
    cols = list(rows[0]) if rows else []
    m = data['machine']
    lines = [f"**{data['title']}** (`{data['benchmark']}`, {data['when']}, torch {m['torch']}, "
             f"load avg {m['load_avg_1m']:.1f})", '', '| ' + ' | '.join(cols) + ' |',
             '|' + '---|' * len(cols)]
    lines += ['| ' + ' | '.join(fmt(r.get(c, '')) for c in cols) + ' |' for r in rows]
    return '\n'.join(lines)


def tables(name: str, data: dict) -> list[str]:
    """One table per result file; bench/gpu.py's file holds a list of rows per part."""
    if 'rows' in data:
        return [table(data)]
    env = data.get('env', {})
    machine = {'torch': env.get('torch', '?'), 'load_avg_1m': float('nan')}
    return [table({'title': f"{name}: {part} on {env.get('gpu', 'no GPU')}", 'benchmark': name, 'when': '',
                   'machine': machine, 'rows': rows})
            for part, rows in data.items() if isinstance(rows, list) and rows and isinstance(rows[0], dict)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('names', nargs='*', help='result names (default: all)')
    args = ap.parse_args()
    paths = [RESULTS / f'{n}.json' for n in args.names] or sorted(RESULTS.glob('*.json'))
    print('\n\n'.join(t for p in paths for t in tables(p.stem, json.loads(p.read_text()))))


if __name__ == '__main__':
    main()

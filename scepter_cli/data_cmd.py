"""`scepter data inspect PATH` (what a dataset path holds)."""
from __future__ import annotations

import json
from typing import Optional

import typer

from .common import console

app = typer.Typer(help='Look into training data.\n\n'
                  'Example: [cyan]scepter data inspect ./photos --resolution 1024[/cyan]', no_args_is_help=True)


@app.command('inspect')
def inspect_cmd(path: str = typer.Argument(..., help='Image folder, metadata.jsonl/parquet folder, .tar shards '
                                                     '(or a brace pattern), CSV/TXT list; any fsspec URL.'),
                resolution: int = typer.Option(512, '--resolution', '-r', help='Pixel budget of the buckets (side).'),
                alignment: int = typer.Option(64, '--alignment', help='Bucket sides are multiples of this.'),
                max_aspect: float = typer.Option(4.0, '--max-aspect', help='Widest bucket aspect ratio.'),
                upscale: bool = typer.Option(False, '--upscale', help='Enlarge small images into their bucket.'),
                plot: Optional[str] = typer.Option('aspect_ratios.png', '--plot',
                                                   help="Aspect-ratio histogram PNG ('' for none)."),
                as_json: bool = typer.Option(False, '--json', help='Print JSON for scripts.')) -> None:
    """Count readable images, bad files (named), images without a caption; show the buckets.

    Every image is decoded in full, so truncated files are found too.
    Examples: [cyan]scepter data inspect ./photos[/cyan], [cyan]scepter data inspect shards/ --json[/cyan]
    """
    from scepter_core.data.inspect import aspect_histogram, inspect_source
    report = inspect_source(path, resolution=resolution, alignment=alignment, max_aspect=max_aspect,
                            upscale=upscale)
    if plot:
        aspect_histogram(report.aspects, plot)
    if as_json:
        typer.echo(json.dumps(report.to_json()))
        return
    from rich.table import Table
    console.print(f'[bold]{path}[/bold] ({report.kind}): [green]{report.images}[/green] readable images, '
                  f'[red]{len(report.bad)}[/red] bad, [yellow]{len(report.no_caption)}[/yellow] without a caption')
    for p, reason in sorted(report.bad.items()):
        console.print(f'  [red]bad[/red] {p}: {reason}', highlight=False)
    total = sum(report.buckets.values()) or 1
    table = Table(title=f'buckets at {resolution}x{resolution} pixels, alignment {alignment}')
    for col in ('height x width', 'aspect (w/h)', 'images', 'share'):
        table.add_column(col, justify='right')
    for (h, w), n in report.buckets.items():
        table.add_row(f'{h} x {w}', f'{w / h:.2f}', str(n), f'{n / total:.1%}')
    console.print(table)
    if plot:
        console.print(f'aspect-ratio histogram: {plot}')

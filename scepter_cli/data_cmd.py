"""`scepter data inspect PATH` (what a dataset path holds), `scepter data cache --cfg RECIPE`."""
from __future__ import annotations

import json
from typing import Optional

import typer

from .common import ImportOpt, SetOpt, console, load_config

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
    table = Table(title=f'buckets at {resolution}x{resolution} pixels, alignment {alignment}')
    for col in report.BUCKET_COLUMNS:
        table.add_column(col, justify='right')
    for row in report.bucket_rows():
        table.add_row(*row)
    console.print(table)
    if plot:
        console.print(f'aspect-ratio histogram: {plot}')


@app.command('cache')
def cache_cmd(cfg: str = typer.Option(..., '--cfg', '-c', help='Training recipe (YAML or JSON).'),
              overrides: Optional[list[str]] = SetOpt, imports: Optional[list[str]] = ImportOpt) -> None:
    """Fill SOLVER.CACHE_DIR with one epoch's latents (and frozen text embeddings) before training.

    Files already cached under the same encoder weights and settings are kept, not recomputed;
    with ENV.NUM_PROCESSES > 1 each process encodes its share.
    Example: [cyan]scepter data cache --cfg recipe.yaml --set SOLVER.CACHE_DIR=./cache[/cyan]
    """
    from scepter_core.data_cache import fill_cache
    from scepter_core.launch import launch
    stats = launch(load_config(cfg, overrides, imports)[0], mode='train', fn=fill_cache)
    if isinstance(stats, dict):
        console.print(f"cached: {stats['computed']} rows computed, {stats['found']} already on disk "
                      f"({stats['batches']} batches per process)")

"""`scepter model info`: component sizes of a model family or a checkpoint."""
from __future__ import annotations

import json
from typing import Optional

import typer

from .common import SetOpt, console

app = typer.Typer(help='Inspect model families and checkpoints.\n\n'
                  'Example: [cyan]scepter model info --family sdxl[/cyan]', no_args_is_help=True)


def _gib(n: int) -> str:
    return f'{n / 2 ** 30:.2f} GiB'


@app.command('info')
def info_cmd(path: Optional[str] = typer.Argument(None, help='A diffusers folder, a .safetensors file or a work dir.'),
             family: Optional[str] = typer.Option(None, '--family',
                                                  help='sd15, sd21, sd21v, sdxl, sdxl-refiner, flux-dev, flux-schnell, '
                                                       'sd35-medium or sd35-large.'),
             dtype: str = typer.Option('float16', '--dtype', help='Inference / frozen-weight dtype.'),
             lora_rank: int = typer.Option(64, '--lora-rank', help='Rank of the LoRA size estimate.'),
             plan: bool = typer.Option(False, '--plan', help='Flow families: peak training memory with activations '
                                                             'for each switch (full / LoRA; bf16, int8, fp8 base; '
                                                             'block offload; checkpointing).'),
             cfg: Optional[str] = typer.Option(None, '--cfg', '-c', help='A FLUX / SD3 training recipe: its planned '
                                                                         'peak memory for each switch, its own '
                                                                         'row marked (as `scepter train` logs it).'),
             overrides: Optional[list[str]] = SetOpt,
             batch: int = typer.Option(1, '--batch', help='Batch size of the --plan.'),
             size: Optional[tuple[int, int]] = typer.Option(None, '--size', help='Image height width of the plan '
                                                                                 '(default 1024 1024, or the recipe\'s).'),
             as_json: bool = typer.Option(False, '--json', help='Print JSON for scripts.')) -> None:
    """Parameters of each component (diffusers' folder names), their size per dtype, and the
    memory for weights, gradients and optimizer state (not activations) to run, fine-tune or
    LoRA-train the model. A family is built on the meta device: nothing is allocated.

    Examples: [cyan]scepter model info --family sdxl --json[/cyan],
    [cyan]scepter model info ./stable-diffusion-xl-base-1.0[/cyan]
    """
    from rich.table import Table
    from scepter_core.errors import ConfigError
    from scepter_core.models import info
    if cfg:
        return _recipe_plan(cfg, overrides, size, as_json)
    if (path is None) == (family is None):
        raise ConfigError('scepter model info: give a PATH, --family or --cfg (one of them)')
    data = info.family_info(family, dtype, lora_rank) if family else info.path_info(path, dtype, lora_rank)
    if plan:
        from scepter_core.models.memory_plan import family_plan
        if not family:
            raise ConfigError('scepter model info --plan: give --family (flux-dev, flux-schnell, sd35-medium, sd35-large)')
        data['plan'] = family_plan(family, dtype, lora_rank, batch, tuple(size or (1024, 1024)))
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    title = f"{data.get('source') or data['family']}: family {data['family'] or 'unknown'}"
    table = Table(title=title)
    for col in ('component', 'parameters', 'float32', f'{dtype}', f'LoRA r{lora_rank}'):
        table.add_column(col, justify='left' if col == 'component' else 'right', no_wrap=True)
    for name, c in data['components'].items():
        lora = c.get('lora_parameters')
        table.add_row(name, f"{c['parameters']:,}", _gib(c['bytes']['float32']),
                      _gib(c['bytes'][dtype]), f'{lora:,}' if lora is not None else '-')
    console.print(table)
    if plan:
        from scepter_core.models.memory_plan import plan_title, Switches
        switches = Switches(**data['plan'][0]['switches'])
        _print_plan(data['plan'], plan_title(family, switches))
    mem = data['memory']
    console.print(f"memory ({dtype} weights; activations not included): inference {_gib(mem['inference'])}, "
                  f"full UNet fine-tune with AdamW {_gib(mem['full_training'])}, "
                  f"LoRA r{lora_rank} {_gib(mem['lora_training'])}")


def _print_plan(rows: list[dict], title: str, mark: Optional[int] = None) -> None:
    from scepter_core.models.memory_plan import render_plan
    for line in render_plan(rows, title, mark):
        typer.echo(line)


def _recipe_plan(cfg_path: str, overrides: Optional[list[str]], size: Optional[tuple[int, int]],
                 as_json: bool) -> None:
    from scepter_core.models.memory_plan import recipe_plan_lines, recipe_table

    from .common import load_config
    cfg, _ = load_config(cfg_path, overrides)
    size = tuple(size) if size else None
    if as_json:
        typer.echo(json.dumps(recipe_table(cfg, size), indent=2))
        return
    for line in recipe_plan_lines(cfg, size):
        typer.echo(line)

"""`scepter config template|show|validate`."""
from __future__ import annotations

from typing import Optional

import typer

from .common import ImportOpt, SetOpt, TrustOpt, console, load_config

app = typer.Typer(help='Config templates, resolved configs and validation.\n\n'
                  'Example: [cyan]scepter config validate --cfg recipe.yaml[/cyan]', no_args_is_help=True)


@app.command()
def template(name: str = typer.Argument(..., help='Registered class, e.g. FrozenCLIPEmbedder.'),
             registry: Optional[str] = typer.Option(None, '--registry', '-r', help='Registry to look in.'),
             imports: Optional[list[str]] = ImportOpt) -> None:
    """Print a commented YAML template for a registered class.

    Example: [cyan]scepter config template FrozenCLIPEmbedder[/cyan]
    """
    from scepter_core.templates import config_template
    from scepter_core.imports import import_user_code
    from scepter_core.registry import find_class
    import_user_code(list(imports or []), label='--import')
    reg, obj = find_class(name, registry)
    typer.echo(config_template(obj, reg.name), nl=False)


@app.command()
def show(cfg: str = typer.Option(..., '--cfg', '-c', help='Recipe file (YAML or JSON).'),
         overrides: Optional[list[str]] = SetOpt, imports: Optional[list[str]] = ImportOpt,
         trust_imports: bool = TrustOpt) -> None:
    """Print the resolved config: bases merged, environment substituted, overrides applied.
    The recipe's IMPORTS are not run (--trust-imports runs them).

    Example: [cyan]scepter config show --cfg examples/tiny_shapes.yaml --set SOLVER.MAX_STEPS=10[/cyan]
    """
    config, _ = load_config(cfg, overrides, imports, trust_imports)
    text = config.to_yaml(mask_secrets=True)
    if console.is_terminal:
        from rich.syntax import Syntax
        console.print(Syntax(text, 'yaml', background_color='default', word_wrap=True))
    else:  # piped: exact YAML, never wrapped or cropped to a terminal width
        typer.echo(text, nl=False)


@app.command()
def validate(cfg: str = typer.Option(..., '--cfg', '-c', help='Recipe file (YAML or JSON).'),
             overrides: Optional[list[str]] = SetOpt, imports: Optional[list[str]] = ImportOpt,
             trust_imports: bool = TrustOpt) -> None:
    """Check every block against its class, without loading weights or data. The recipe's
    IMPORTS are not run unless --trust-imports: blocks of the classes they register are unknown.

    Exit 0 when valid; otherwise one line per problem and exit 2.
    Example: [cyan]scepter config validate --cfg recipe.yaml[/cyan]
    """
    from scepter_core.validate import validate_recipe
    config, not_run = load_config(cfg, overrides, imports, trust_imports)
    problems = validate_recipe(config)
    if problems:
        for p in problems:
            typer.echo(p, err=True)
        if not_run:
            typer.echo(f'note: {not_run}', err=True)
        raise typer.Exit(2)
    console.print(f'[green]ok[/green]: {cfg} is valid')

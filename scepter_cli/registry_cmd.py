"""`scepter registry list [REGISTRY]`."""
from __future__ import annotations

import json
from typing import Optional

import typer

from .common import console

app = typer.Typer(help='Inspect the registries of buildable classes.\n\n'
                  'Example: [cyan]scepter registry list MODELS[/cyan]', no_args_is_help=True)


def _summary(obj) -> str:
    doc = (getattr(obj, '__doc__', None) or '').strip()
    return doc.splitlines()[0] if doc else ''


@app.command('list')
def list_cmd(registry: Optional[str] = typer.Argument(None, help='One registry, e.g. MODELS.'),
             as_json: bool = typer.Option(False, '--json', help='Print JSON for scripts.')) -> None:
    """List registries and their members with a one-line description.

    Examples: [cyan]scepter registry list[/cyan], [cyan]scepter registry list HOOKS --json[/cyan]
    """
    from rich.table import Table
    from scepter_core.registry import REGISTRIES, _load_builtins, get_registry
    _load_builtins()
    regs = [get_registry(registry)] if registry else list(REGISTRIES.values())
    data = {r.name: {n: _summary(r.get(n)) for n in r.names()} for r in regs}
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    table = Table(title='scepter registries', show_lines=False)
    table.add_column('registry', style='bold cyan')
    table.add_column('name', style='green')
    table.add_column('description')
    for reg in regs:
        aliases = {}
        for a, target in reg.aliases().items():
            aliases.setdefault(target, []).append(a)
        for i, (name, desc) in enumerate(data[reg.name].items()):
            shown = name + (f" ({', '.join(aliases[name])})" if name in aliases else '')
            table.add_row(reg.name if i == 0 else '', shown, desc)
        if not data[reg.name]:
            table.add_row(reg.name, '[dim]-[/dim]', '')
        table.add_section()
    console.print(table)

"""`scepter studio`: the web UI (needs the `studio` extra: pip install 'scepter-forge[studio]')."""
from __future__ import annotations

from typing import Optional

import typer

from .common import console


def studio(host: str = typer.Option('127.0.0.1', '--host', help='Address to bind; beyond loopback needs --token.'),
           port: int = typer.Option(7860, '--port', help='Port.'),
           root: Optional[list[str]] = typer.Option(None, '--root', help='Directory the UI may read and write '
                                                    '(repeatable; default: the current directory).'),
           token: Optional[str] = typer.Option(None, '--token', envvar='SCEPTER_STUDIO_TOKEN',
                                               help='Every request must carry it (open http://HOST:PORT/?token=...).'),
           max_upload_mb: float = typer.Option(50, '--max-upload-mb', help='Largest upload or request body.')) -> None:
    """Scepter Studio in the browser: generate, train, browse data, inspect and convert models.

    Example: [cyan]scepter studio --root work_dirs --port 7860[/cyan]
    """
    from scepter_core.errors import ScepterError
    from scepter_studio.guard import check_bind
    check_bind(host, token)  # before the heavy imports: a refusal comes at once
    try:
        from scepter_studio.server import serve
    except ImportError as e:
        raise ScepterError(f"scepter studio needs the studio extra: pip install 'scepter-forge[studio]' ({e})") from e
    url = f'http://{host}:{port}/' + (f'?token={token}' if token else '')
    console.print(f'Scepter Studio on [cyan]{url}[/cyan] (roots: {", ".join(root or ["."])}); Ctrl+C stops it')
    serve(list(root or ['.']), host, port, token, int(max_upload_mb * 2 ** 20))


def register(app: typer.Typer) -> None:
    app.command('studio')(studio)

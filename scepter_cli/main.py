"""Entry point: `scepter`. Errors print as one or two lines; `--debug` shows tracebacks."""
from __future__ import annotations

import sys

import click
import typer

from . import config_cmd, convert_cmd, registry_cmd, run_cmd
from .common import err_console

app = typer.Typer(
    name='scepter', no_args_is_help=True, rich_markup_mode='rich', add_completion=False,
    help='Define, train, test and run generative image models from YAML recipes.',
    context_settings={'help_option_names': ['-h', '--help']})
app.add_typer(registry_cmd.app, name='registry')
app.add_typer(config_cmd.app, name='config')
run_cmd.register(app)
convert_cmd.register(app)


def _version(value: bool) -> None:
    if value:
        from scepter_core import __version__
        typer.echo(f'scepter {__version__}')
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, '--version', callback=_version, is_eager=True,
                                       help='Print the version and exit.'),
          debug: bool = typer.Option(False, '--debug', help='Show full tracebacks on errors.')) -> None:
    """Define, train, test and run generative image models from YAML recipes."""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = '--debug' in argv
    try:
        rc = app(args=argv, prog_name='scepter', standalone_mode=False)
        return rc if isinstance(rc, int) else 0
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.exceptions.Abort:
        err_console.print('[red]aborted[/red]')
        return 1
    except click.ClickException as e:
        e.show()
        return 2
    except KeyboardInterrupt:
        err_console.print('[red]interrupted[/red]')
        return 130
    except Exception as e:  # one readable line; the traceback only with --debug
        if debug:
            raise
        from scepter_core.errors import ScepterError
        if isinstance(e, ScepterError):
            msg, code = str(e), e.exit_code
        else:
            msg, code = f'{type(e).__name__}: {e}', 1
        cause = e.__cause__
        lines = msg.splitlines() or ['']
        err_console.print(f'[bold red]error:[/bold red] {lines[0]}', highlight=False, markup=True,
                          soft_wrap=True)
        for line in lines[1:]:
            err_console.print(f'       {line}', highlight=False, markup=False, soft_wrap=True)
        if cause is not None and not isinstance(e, ScepterError):
            err_console.print(f'       caused by {type(cause).__name__}: {cause}', highlight=False,
                              markup=False, soft_wrap=True)
        err_console.print('[dim](run with --debug for the traceback)[/dim]')
        return code


def run() -> None:
    sys.exit(main())


if __name__ == '__main__':
    run()

"""Entry point: `scepter`. Errors print as one or two lines; `--debug` shows tracebacks."""
from __future__ import annotations

import logging
import signal
import sys

import typer

try:  # recent Typer releases vendor click; their exceptions are not click's
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover - older Typer on top of click
    from click.exceptions import ClickException

from . import config_cmd, convert_cmd, data_cmd, model_cmd, registry_cmd, run_cmd, studio_cmd
from .common import err_console

app = typer.Typer(
    name='scepter', no_args_is_help=True, rich_markup_mode='rich', add_completion=False,
    help=('Define, train, test and run generative image models from YAML recipes.\n\n'
          'Examples: [cyan]scepter registry list[/cyan], '
          '[cyan]scepter config template FrozenCLIPEmbedder[/cyan], '
          '[cyan]scepter config validate --cfg recipe.yaml --set SOLVER.MAX_STEPS=10[/cyan]'),
    context_settings={'help_option_names': ['-h', '--help']})
app.add_typer(registry_cmd.app, name='registry')
app.add_typer(config_cmd.app, name='config')
app.add_typer(data_cmd.app, name='data')
app.add_typer(model_cmd.app, name='model')
run_cmd.register(app)
convert_cmd.register(app)
studio_cmd.register(app)


def _version(value: bool) -> None:
    if value:
        from scepter_core import __version__
        typer.echo(f'scepter {__version__}')
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, '--version', callback=_version, is_eager=True,
                                       help='Print the version and exit.'),
          debug: bool = typer.Option(False, '--debug', help='Show full tracebacks on errors.')) -> None:
    """Global options (the help text is the app's)."""


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of the record (it may be redirected)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass

    def filter(self, record: logging.LogRecord) -> bool:
        # once a run gave the 'scepter' logger its own handlers (logs.setup_logging), its records
        # are printed there: a warning shows once, not twice
        if record.name.split('.')[0] == 'scepter' and any(
                getattr(h, '_scepter', False) and getattr(h, 'stream', None) is sys.stderr
                for h in logging.getLogger('scepter').handlers):
            return False
        return super().filter(record)


def _setup_logging() -> None:
    """Warnings from the library (e.g. keys ignored with STRICT off) as `WARNING: ...` lines
    on stderr; commands that log more add their own handlers."""
    root = logging.getLogger()
    if not root.handlers:
        handler = _StderrHandler()
        handler.setLevel(logging.WARNING)
        handler.setFormatter(logging.Formatter('%(levelname)s: %(message)s'))
        root.addHandler(handler)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _setup_logging()
    debug = '--debug' in argv
    if debug:  # accepted anywhere on the line, not only before the command
        argv = ['--debug'] + [a for a in argv if a != '--debug']
    try:
        rc = app(args=argv, prog_name='scepter', standalone_mode=False)
        return rc if isinstance(rc, int) else 0
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        err_console.print('[red]aborted[/red]')
        return 1
    except ClickException as e:  # usage errors: click prints usage and the problem
        e.show()
        return e.exit_code
    except KeyboardInterrupt:
        err_console.print('[red]interrupted[/red]')
        return 130
    except Exception as e:  # one readable line; the traceback only with --debug
        if debug:
            raise
        return _report(e)


def _report(e: Exception) -> int:
    """Print an error in a few lines without a traceback; return the exit code."""
    from rich.markup import escape
    from scepter_core.errors import ScepterError
    if isinstance(e, ScepterError):
        msg, code = str(e), e.exit_code
    else:
        msg, code = f'{type(e).__name__}: {e}', 1
    lines = msg.splitlines() or ['']
    if e.__cause__ is not None and not isinstance(e, ScepterError):
        lines.append(f'caused by {type(e.__cause__).__name__}: {e.__cause__}')
    err_console.print(f'[bold red]error:[/bold red] {escape(lines[0])}', highlight=False, soft_wrap=True)
    for line in lines[1:]:
        err_console.print(f'       {line}', highlight=False, markup=False, soft_wrap=True)
    err_console.print('[dim](run with --debug for the traceback)[/dim]', highlight=False)
    return code


def run() -> None:
    code = main()
    if code in (130, 143):  # stopped on a signal, its checkpoint written: the process ends, and a late
        for s in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C must not kill it (-2) or print a traceback
            signal.signal(s, signal.SIG_IGN)       # during interpreter shutdown
    sys.exit(code)


if __name__ == '__main__':
    run()

"""The `ctxssl` command: wires one module per command and maps every error to one line.

Errors: `Error: <what> — <fix>` on stderr and a non-zero exit; a traceback only with CTXSSL_DEBUG=1.
"""

from __future__ import annotations

import os
import sys

import typer

from ctxssl_cli import __version__
from ctxssl_cli.cli import embed, evaluate, prepare, pretrain
from ctxssl_cli.errors import CtxsslError

app = typer.Typer(
    name="ctxssl",
    help="Contextual Self-Supervised Learning (ContextSSL, Gupta et al., NeurIPS 2024): one model that becomes "
         "equivariant or invariant to a transformation depending on the context it is shown.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(prepare.app, name="prepare")
app.command("pretrain", no_args_is_help=False)(pretrain.pretrain)
app.command("embed")(embed.embed)
app.command("evaluate")(evaluate.evaluate)


def _version(value: bool) -> None:
    if value:
        print(f"ctxssl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Prepare a dataset, pretrain, embed with a context, evaluate."""


def _fail(message: str, code: int) -> None:
    print(f"Error: {message}", file=sys.stderr)
    sys.exit(code)


def main() -> None:
    debug = os.environ.get("CTXSSL_DEBUG") == "1"
    try:
        app()
    except CtxsslError as e:
        if debug:
            raise
        _fail(e.message, e.exit_code)
    except MemoryError:
        if debug:
            raise
        _fail("out of memory — lower train.batch_size / --batch-size or the resolution", 1)
    except OSError as e:
        if debug:
            raise
        _fail(f"{e.strerror or e} ({e.filename or ''}) — check the path, permissions and free disk space", 1)
    except Exception as e:  # a bug: say so plainly, keep the traceback for CTXSSL_DEBUG=1
        if debug:
            raise
        _fail(f"internal error: {type(e).__name__}: {e} — rerun with CTXSSL_DEBUG=1 for the traceback "
              "and report it", 1)

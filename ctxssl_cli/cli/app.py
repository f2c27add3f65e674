"""The `ctxssl` command: wires one module per command and maps every error to one line.

Errors: `Error: <what> — <fix>` on stderr and a non-zero exit; a traceback only with CTXSSL_DEBUG=1. A full disk,
a quota, a read-only file system or a denied permission is named as such, with the path it happened at.
"""

from __future__ import annotations

import errno
import os
import sys

import typer

from ctxssl_cli import __version__
from ctxssl_cli.cli import compare, embed, evaluate, export, plot, prepare, pretrain
from ctxssl_cli.errors import CtxsslError
from ctxssl_cli.fileio import os_error_of

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
app.command("compare")(compare.compare)
app.command("export")(export.export)
app.command("plot")(plot.plot)


def _version(value: bool) -> None:
    if value:
        print(f"ctxssl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Prepare a dataset, pretrain (ContextSSL or a baseline), embed with a context, evaluate, compare runs."""


def os_error_message(e: OSError) -> str:
    """`<what> — <fix>` for an operating-system error: a full disk, a quota, a read-only file system and a
    permission are named as such, with the file (or folder) they happened at and how to get past them."""
    where = os.fsdecode(e.filename) if isinstance(e.filename, (str, bytes, os.PathLike)) else None
    folder = where if where is None or os.path.isdir(where) else os.path.dirname(where) or "."
    place, disk = where or "a file", folder or "the output folder"
    if e.errno == errno.ENOSPC:
        df = f" (`df -h {folder}` shows it)" if folder else ""
        return (f"no space left on device writing {place} — free space on the disk that holds {disk}{df}, or choose "
                "an --out on another disk")
    if e.errno == getattr(errno, "EDQUOT", -1):  # not on Windows
        return (f"disk quota exceeded writing {place} — free space within your quota on {disk}, or choose an --out "
                "elsewhere")
    if e.errno == errno.EROFS:
        return f"read-only file system: cannot write {place} — choose a writable --out"
    if e.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied: {place} — give this user access to {disk}, or choose a writable --out"
    return f"{e.strerror or e}{f' ({where})' if where else ''} — check the path, permissions and free disk space"


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
        _fail(os_error_message(e), 1)
    except Exception as e:  # a bug: say so plainly, keep the traceback for CTXSSL_DEBUG=1
        if debug:
            raise
        named = os_error_of(e)  # an OS error that a library reports as its own exception (safetensors)
        if named is not None:
            _fail(os_error_message(named), 1)
        _fail(f"internal error: {type(e).__name__}: {e} — rerun with CTXSSL_DEBUG=1 for the traceback "
              "and report it", 1)

"""`ctxssl plot`: the training curves of one or more runs in one figure (loss terms, online aux R² per environment,
learning rate, pairs/s against step)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ctxssl_cli.cli.common import out


def plot(
    runs: Annotated[list[Path], typer.Argument(help="Run folders (written by `ctxssl pretrain`).", show_default=False)],
    out_file: Annotated[Path, typer.Option("--out", "-o", help="The PNG to write.", show_default=False)],
) -> None:
    """Overlay the training curves of runs (each run also keeps its own RUN/curves.png)."""
    from ctxssl_cli.curves import plot_command

    path = plot_command(list(runs), out_file)
    out.print(f"wrote {path}", soft_wrap=True, markup=False)

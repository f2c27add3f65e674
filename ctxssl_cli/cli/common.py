"""What every command shares: the stderr console, progress bars, run lookup, and option aliases."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

from ctxssl_cli.paths import latest_run  # noqa: F401  (the commands import it from here)

# Results go to stdout; progress, logs and errors to stderr (so `ctxssl evaluate > table.txt` stays clean).
out = Console()
err = Console(stderr=True)


def progress_bar(transient: bool = False) -> Progress:
    """A rich progress bar on stderr with count, rate-bearing description, elapsed time and ETA."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=20),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err,
        transient=transient,
    )


# Shared option aliases -------------------------------------------------------------------------------------
CheckpointOpt = Annotated[Optional[Path], typer.Option(
    "--checkpoint", "-c", help="Run folder or checkpoint file. Default: the latest run under ./runs.")]
DataOpt = Annotated[Optional[Path], typer.Option(
    "--data", "-d", help="Prepared dataset folder. Default: the one recorded in the run's spec.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")]
ContextLengthOpt = Annotated[Optional[list[int]], typer.Option(
    "--context-length", "-l", help="Context length in tokens (even, < block size); repeatable.")]

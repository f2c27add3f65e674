"""What every command shares: the stdout/stderr consoles, run lookup, and option aliases (progress: ctxssl_cli/progress.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from ctxssl_cli.paths import latest_run  # noqa: F401  (the commands import it from here)

# Results go to stdout; progress, logs and errors to stderr (so `ctxssl evaluate > table.txt` stays clean).
out = Console()
err = Console(stderr=True)


# Shared option aliases -------------------------------------------------------------------------------------
CheckpointOpt = Annotated[Optional[Path], typer.Option(
    "--checkpoint", "-c", help="Run folder or checkpoint file. Default: the latest run under ./runs.")]
DataOpt = Annotated[Optional[Path], typer.Option(
    "--data", "-d", help="Prepared dataset folder. Default: the one recorded in the run's spec.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")]
ContextLengthOpt = Annotated[Optional[list[int]], typer.Option(
    "--context-length", "-l", help="Context length in tokens (even, < block size); repeatable.")]

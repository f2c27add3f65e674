"""`ctxssl export`: a run -> a plain torchvision encoder, the Python API's model and a model card (export.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ctxssl_cli.cli.common import err, latest_run, out


def export(
    run: Annotated[Optional[Path], typer.Argument(help="Run folder or checkpoint file. Default: the latest run under ./runs.", show_default=False)] = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", "-o", help="Export folder, written atomically. Default: RUN/export.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty --out that is not an earlier export.")] = False,
) -> None:
    """Export a run: encoder.safetensors (torchvision key names), model.safetensors + config.yaml (for ctxssl.load), README.md (model card)."""
    from ctxssl_cli.export import export_run, size_text

    run = run or latest_run()
    target = out_dir or (run if run.is_dir() else run.parent) / "export"
    result = export_run(run, target, overwrite=overwrite)
    if result.replaced:
        err.print(f"replaced {result.replaced} in {result.out}", soft_wrap=True, markup=False)
    for note in result.notes:
        err.print(f"note: {note}", soft_wrap=True, markup=False)
    lines = [f"export: {result.out}"]
    lines += [f"  {name:<20} {size_text(size):>9}  {what}" for name, size, what in result.files]
    lines += [f"torchvision: {result.recipe}", f"python: ctxssl.load({str(result.out)!r})"]
    for line in lines:
        out.print(line, soft_wrap=True, markup=False)

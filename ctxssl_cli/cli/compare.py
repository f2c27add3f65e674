"""`ctxssl compare`: evaluated runs side by side with the paper's Table 1 -> compare.md, compare.json, compare.png."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ctxssl_cli.cli.common import out


def compare(
    runs: Annotated[list[Path], typer.Argument(help="Run folders (each evaluated with `ctxssl evaluate`), or their report.json files.", show_default=False)],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for compare.md, compare.json and compare.png.", show_default=False)],
    allow_mixed: Annotated[bool, typer.Option("--allow-mixed", help="Keep runs evaluated on another dataset or with another protocol than the first (their rows are marked).")] = False,
) -> None:
    """Rotation R², colour R², top-1 and MRR of several runs side by side, with the paper's numbers for reference."""
    from ctxssl_cli.evaluate.compare import compare_runs, print_comparison, write_comparison

    comparison = compare_runs(list(runs), allow_mixed=allow_mixed)
    files = write_comparison(comparison, out_dir)
    print_comparison(comparison, out)
    for f in files:
        out.print(f"wrote {f}", soft_wrap=True, markup=False)

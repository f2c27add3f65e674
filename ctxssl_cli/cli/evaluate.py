"""`ctxssl evaluate`: the paper's protocol on a trained run -> report.json, report.md, plots (SPEC §4)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ctxssl_cli.cli.common import CheckpointOpt, ContextLengthOpt, DataOpt, DeviceOpt, err, latest_run, out, progress_bar
from ctxssl_cli.errors import CtxsslError


def evaluate(
    checkpoint: CheckpointOpt = None,
    data: DataOpt = None,
    embeddings: Annotated[Optional[list[Path]], typer.Option("--embeddings", "-e", help="Reuse embeddings files from `ctxssl embed` (train and/or val); repeatable.")] = None,
    context_length: ContextLengthOpt = None,
    r2: Annotated[str, typer.Option("--r2", help="sklearn (variance-weighted, default) or paper (one global target mean).")] = "sklearn",
    device: DeviceOpt = "auto",
    out_dir: Annotated[Optional[Path], typer.Option("--out", "-o", help="Report folder. Default: RUN/eval.")] = None,
) -> None:
    """R² of rotation/color (pair probes), MRR/H@k retrieval, linear and kNN top-1: tables, JSON and plots."""
    from ctxssl_cli import embed as E
    from ctxssl_cli.evaluate.pipeline import EvalSettings, evaluate_run
    from ctxssl_cli.evaluate.report import print_tables, write_report
    from ctxssl_cli.runs import load_run
    from ctxssl_cli.devices import resolve_device

    if r2 not in ("sklearn", "paper"):
        raise CtxsslError(f"unknown --r2 '{r2}'", "use --r2 sklearn or --r2 paper")
    ckpt = checkpoint or latest_run()
    run = load_run(ckpt, data, resolve_device(device))
    block = run.spec.model.block_size
    lengths = E.check_lengths(context_length if context_length else E.default_lengths(block), block)
    settings = EvalSettings(lengths=lengths, r2_kind=r2)
    target = out_dir or run.checkpoint.parent / "eval"
    target.mkdir(parents=True, exist_ok=True)
    err.print(f"checkpoint: {run.checkpoint} (step {run.step})  data: {run.data.root}  lengths: {lengths}")
    with progress_bar(transient=True) as bar:
        report = evaluate_run(run, settings, list(embeddings or []), run.checkpoint.parent / "embeddings",
                              progress=bar)
    files = write_report(report, target)
    print_tables(report, out)
    for f in files:
        out.print(f"wrote {f}")

"""`ctxssl evaluate`: the paper's protocol on a trained run -> report.json, report.md, plots (SPEC §4)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ctxssl_cli.cli.common import CheckpointOpt, ContextLengthOpt, DataOpt, DeviceOpt, err, latest_run, out


def evaluate(
    checkpoint: CheckpointOpt = None,
    data: DataOpt = None,
    embeddings: Annotated[Optional[list[Path]], typer.Option("--embeddings", "-e", help="Reuse embeddings files from `ctxssl embed` (train and/or val); repeatable.")] = None,
    context_length: ContextLengthOpt = None,
    probes: Annotated[str, typer.Option("--probes", help="R² probe protocol: paper (the published probes; the only one).")] = "paper",
    probe_epochs: Annotated[int, typer.Option("--probe-epochs", help="Epochs of the R² probes (published: 300).")] = 300,
    r2: Annotated[str, typer.Option("--r2", help="R² definition of the headline tables: paper (one global target mean, as published) or sklearn (per-dimension means); both are reported.")] = "paper",
    train_views: Annotated[Optional[int], typer.Option("--train-views", help="Train views per object to embed for the probes (default: all).")] = None,
    probe_memory: Annotated[float, typer.Option("--probe-memory", help="GB of embeddings whose R² probes train together (more: faster; 0: one embedding at a time, the least memory).")] = 2.0,
    device: DeviceOpt = "auto",
    out_dir: Annotated[Optional[Path], typer.Option("--out", "-o", help="Report folder. Default: RUN/eval.")] = None,
) -> None:
    """R² per factor (rotation/color, or crop/color/blur on 2D data; pair probes), MRR/H@k retrieval, linear and kNN top-1: tables, JSON and plots."""
    from ctxssl_cli.evaluate.pipeline import EvalSettings, evaluate_checkpoint
    from ctxssl_cli.evaluate.report import print_tables
    from ctxssl_cli.progress import Progress

    settings = EvalSettings(lengths=context_length, r2_kind=r2, probes=probes, probe_epochs=probe_epochs,
                            train_views_per_object=train_views, probe_memory_gb=probe_memory)  # checked before the run loads
    result = evaluate_checkpoint(checkpoint or latest_run(), data, device, settings, list(embeddings or []),
                                 out_dir, progress=Progress,
                                 log=lambda msg: err.print(msg, soft_wrap=True, markup=False))
    print_tables(result.report, out)
    for f in result.files:
        out.print(f"wrote {f}", soft_wrap=True, markup=False)

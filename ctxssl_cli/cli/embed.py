"""`ctxssl embed`: context-conditioned embeddings of a split -> safetensors (SPEC §4)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ctxssl_cli.cli.common import CheckpointOpt, ContextLengthOpt, DataOpt, DeviceOpt, err, latest_run, out


def embed(
    checkpoint: CheckpointOpt = None,
    data: DataOpt = None,
    split: Annotated[str, typer.Option("--split", help="train or val.")] = "val",
    context_mode: Annotated[Optional[list[str]], typer.Option("--context-mode", "-m", help="Per factor of the run's dataset, or none: rotation, color, none (3D views); crop, color, blur, none (2D augmentations). Repeatable. Default: all of the dataset's.")] = None,
    context_length: ContextLengthOpt = None,
    context_pairs: Annotated[Optional[Path], typer.Option("--context-pairs", help="YAML file of your own context pairs (see README).")] = None,
    views_per_object: Annotated[int, typer.Option("--views-per-object", help="Embed this many seeded views per object (0: all).")] = 0,
    retrieval: Annotated[bool, typer.Option("--retrieval/--no-retrieval", help="Also store the action-conditioned queries used for MRR.")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per encoder batch.")] = 256,
    device: DeviceOpt = "auto",
    out_file: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output .safetensors. Default: RUN/embeddings/<split>-<hash>.safetensors.")] = None,
) -> None:
    """Embed every view of a split (a 2D dataset: 4 fixed augmented views per image): features h and outputs z per context mode and length, one encoder pass."""
    from ctxssl_cli.embed import EmbedSettings, embed_run
    from ctxssl_cli.progress import Progress

    settings = EmbedSettings(split=split, modes=context_mode, lengths=context_length, context_pairs=context_pairs,
                             views_per_object=views_per_object, retrieval=retrieval, batch_size=batch_size,
                             out=out_file)  # checks every option before the run is loaded
    log = lambda msg: err.print(msg, soft_wrap=True, markup=False)  # noqa: E731 (paths: no wrapping, no markup)
    result = embed_run(checkpoint or latest_run(), data, device, settings, progress=Progress, log=log)
    n, v, f = result.shape
    for line in (f"embeddings: {result.path}",
                 f"views: {n} objects x {v} views, feature dim {f}; modes: {', '.join(result.modes)}; "
                 f"context lengths: {', '.join(map(str, result.lengths))}",
                 f"context: {result.context.label()}"):
        out.print(line, soft_wrap=True, markup=False)

"""`ctxssl embed`: context-conditioned embeddings of a split -> safetensors (SPEC §4)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ctxssl_cli.cli.common import CheckpointOpt, ContextLengthOpt, DataOpt, DeviceOpt, err, latest_run, out, progress_bar
from ctxssl_cli.errors import CtxsslError


def embed(
    checkpoint: CheckpointOpt = None,
    data: DataOpt = None,
    split: Annotated[str, typer.Option("--split", help="train or val.")] = "val",
    context_mode: Annotated[Optional[list[str]], typer.Option("--context-mode", "-m", help="rotation, color or none; repeatable. Default: all three.")] = None,
    context_length: ContextLengthOpt = None,
    context_pairs: Annotated[Optional[Path], typer.Option("--context-pairs", help="YAML file of your own context pairs (see README).")] = None,
    views_per_object: Annotated[int, typer.Option("--views-per-object", help="Embed this many seeded views per object (0: all).")] = 0,
    retrieval: Annotated[bool, typer.Option("--retrieval/--no-retrieval", help="Also store the action-conditioned queries used for MRR.")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per encoder batch.")] = 256,
    device: DeviceOpt = "auto",
    out_file: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output .safetensors. Default: RUN/embeddings/<split>-<hash>.safetensors.")] = None,
) -> None:
    """Embed every view of a split: features h and outputs z per context mode and length, one encoder pass."""
    from ctxssl_cli import embed as E
    from ctxssl_cli.runs import load_run
    from ctxssl_cli.devices import resolve_device

    ckpt = checkpoint or latest_run()
    run = load_run(ckpt, data, resolve_device(device))
    modes = list(dict.fromkeys(context_mode or E.MODES))
    for m in modes:
        E.mode_mask(m)  # validates the name
    lengths = E.check_lengths(context_length if context_length else E.default_lengths(run.spec.model.block_size),
                              run.spec.model.block_size)
    context = E.load_context_file(run, context_pairs) if context_pairs else E.default_context(run)
    if max(lengths) // 2 > len(context.obj):
        raise CtxsslError(f"context length {max(lengths)} needs {max(lengths) // 2} pairs but the context has "
                          f"{len(context.obj)}", "add pairs to the context file or use a shorter --context-length")
    meta = E.embeddings_metadata(run, split, modes, lengths, context, retrieval, views_per_object)
    target = out_file or (run.checkpoint.parent / "embeddings" / f"{split}-{E.cache_key(meta)}.safetensors")
    if target.suffix != ".safetensors":
        raise CtxsslError(f"--out {target} must end in .safetensors", f"e.g. --out {target.with_suffix('.safetensors')}")
    err.print(f"checkpoint: {run.checkpoint} (step {run.step})  data: {run.data.root}  split: {split}")
    with progress_bar(transient=True) as bar:
        tensors = E.embed_split(run, split, modes, lengths, context, views_per_object or None, retrieval,
                                batch_size, progress=bar)
    E.save_embeddings(target, tensors, meta)
    n, v, f = tensors["h"].shape
    out.print(f"embeddings: {target}")
    out.print(f"views: {n} objects x {v} views, feature dim {f}; modes: {', '.join(modes)}; "
              f"context lengths: {', '.join(map(str, lengths))}")

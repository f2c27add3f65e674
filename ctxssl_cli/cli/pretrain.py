"""`ctxssl pretrain`: train ContextSSL or a baseline (the spec's `method:`) from a preset or spec file (SPEC §2, §6, §7)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ctxssl_cli.cli.common import DeviceOpt, err, out
from ctxssl_cli.errors import CtxsslError


def pretrain(
    preset: Annotated[str, typer.Option("--preset", "-p", help="Preset name (presets/*.yaml) or a YAML spec file (a run's own spec.yaml too).")] = "rotcolor",
    data: Annotated[Optional[Path], typer.Option("--data", "-d", help="Prepared dataset. Default: the built-in synthetic benchmark (rendered on first use).")] = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", "-o", help="Run folder. Default: runs/<name>-<timestamp> (with --resume: the latest run).")] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="Run name (the folder under runs/ is <name>-<timestamp>). Default: the preset's.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a spec key, e.g. --set train.epochs=10 (repeatable).")] = None,
    device: DeviceOpt = "auto",
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its checkpoint, exactly.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the run already in --out (never files ctxssl did not write).")] = False,
    compile_: Annotated[bool, typer.Option("--compile", help="torch.compile the model (slower start; on the CPU about 1.06x on the demo, off by default).")] = False,
    log: Annotated[Optional[str], typer.Option("--log", help="Also log metrics to: tensorboard (RUN/tensorboard; needs the optional tensorboard package).")] = None,
) -> None:
    """Pretrain ContextSSL, or a baseline (`method:` in the preset: simclr, vicreg, equimod, sie, sen). Single process by default; under torchrun, DDP over all processes."""
    from ctxssl_cli.allocator import keep_freed_memory

    keep_freed_memory()  # every step frees and allocates the same large blocks: keep them (allocator.py)
    from ctxssl_cli.spec import load_spec

    overrides = list(set_ or [])
    if data is not None:
        overrides.append(f"data.path={data}")
    if name is not None:
        overrides.append(f"name={name}")
    spec = load_spec(preset, overrides)  # first, so that a typo fails in a fraction of a second
    if log not in (None, "tensorboard"):
        raise CtxsslError(f"unknown --log '{log}'", "use --log tensorboard (metrics.jsonl and curves.png are always written)")
    if log == "tensorboard":
        from ctxssl_cli.train.loop import check_tensorboard

        check_tensorboard()

    from ctxssl_cli.train.launch import run_pretraining

    def started(run_dir, data_dir, dev, world) -> None:
        err.print(f"run: {run_dir}  data: {data_dir}  device: {dev}  ranks: {world}")

    result = run_pretraining(spec, out_dir=out_dir, resume=resume, overwrite=overwrite, device=device,
                             compile_model=compile_, tensorboard=log == "tensorboard", on_start=started)
    if not result.is_main:
        return
    summary = result.summary
    if result.interrupted:
        err.print(f"Interrupted at step {summary['final_step']}: checkpoint saved. Continue with: "
                  f"{result.resume_command}", soft_wrap=True)
    out.print(f"run: {result.run_dir}")
    for k in ("final_step", "total_steps", "loss", "nce", "aux", "aux_r2", "pairs_per_s"):
        if k in summary:
            v = summary[k]
            out.print(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}")
    if result.interrupted:
        raise typer.Exit(130)

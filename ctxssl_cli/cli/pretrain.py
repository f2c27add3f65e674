"""`ctxssl pretrain`: train a ContextSSL model from a preset or spec file (SPEC §2, §6)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from ctxssl_cli import paths
from ctxssl_cli.cli.common import DeviceOpt, err, latest_run, out, progress_bar
from ctxssl_cli.errors import CtxsslError


def resolve_data(path: str, is_main: bool) -> Path:
    """The folder of the prepared dataset named by the spec; the default synthetic benchmark is rendered on
    first use (by rank 0; the caller opens the folder after a barrier)."""
    from ctxssl_cli.data.prepared import is_prepared
    from ctxssl_cli.data.synthetic import check_renderer, synthetic_manifest

    if path:
        p = Path(path).expanduser()
        if not p.exists():
            raise CtxsslError(f"dataset folder {p} does not exist",
                              "prepare one with `ctxssl prepare synthetic --out DIR` or `ctxssl prepare 3diebench`")
        return p
    p = paths.default_synthetic_dir()
    check_renderer(p, synthetic_manifest(p))
    if not is_prepared(p) and is_main:
        from ctxssl_cli.data.synthetic import prepare_synthetic

        err.print(f"[bold]The built-in synthetic benchmark is not rendered yet: rendering it once into {p}[/] "
                  "(a few minutes on 2 cores; `ctxssl prepare synthetic` does the same)")
        prepare_synthetic(p, progress=True)
    return p


def stored_data_path(run_dir: Path) -> str:
    from ctxssl_cli.spec import spec_from_yaml_text

    return spec_from_yaml_text((run_dir / "spec.yaml").read_text()).data.path


def pretrain(
    preset: Annotated[str, typer.Option("--preset", "-p", help="Preset name (presets/*.yaml) or a YAML spec file.")] = "rotcolor",
    data: Annotated[Optional[Path], typer.Option("--data", "-d", help="Prepared dataset. Default: the built-in synthetic benchmark (rendered on first use).")] = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", "-o", help="Run folder. Default: runs/<name>-<timestamp> (with --resume: the latest run).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a spec key, e.g. --set train.epochs=10 (repeatable).")] = None,
    device: DeviceOpt = "auto",
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its checkpoint, exactly.")] = False,
    compile_: Annotated[bool, typer.Option("--compile", help="torch.compile the model (GPU; slower start, faster steps).")] = False,
) -> None:
    """Pretrain ContextSSL. Single process by default; under torchrun, DDP over all processes."""
    from ctxssl_cli.spec import load_spec

    overrides = list(set_ or [])
    if data is not None:
        overrides.append(f"data.path={data}")
    spec = load_spec(preset, overrides)  # first, so that a typo fails in a fraction of a second

    from ctxssl_cli.data.prepared import PreparedDataset
    from ctxssl_cli.train import dist as D
    from ctxssl_cli.train.loop import pretrain as run_pretrain
    if out_dir is None:
        out_dir = latest_run() if resume else paths.runs_dir() / f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if resume and not spec.data.path and (out_dir / "spec.yaml").is_file():
        # a resumed run keeps reading the dataset it started with unless --data says otherwise
        spec.data.path = stored_data_path(out_dir)
    info = D.setup(device)
    try:
        data_path = resolve_data(spec.data.path, info.is_main)
        D.barrier(info)  # other ranks wait for rank 0 to render the default benchmark
        dataset = PreparedDataset(data_path)
        spec.data.path = str(dataset.root.resolve())
        if info.is_main:
            err.print(f"run: {out_dir}  data: {dataset.root}  device: {info.device}  ranks: {info.world_size}")
        if info.is_main:
            with progress_bar() as bar:
                summary = run_pretrain(spec, dataset, out_dir, info, resume=resume, compile_model=compile_,
                                       progress=bar)
        else:
            summary = run_pretrain(spec, dataset, out_dir, info, resume=resume, compile_model=compile_)
    finally:
        D.cleanup(info)
    if info.is_main:
        if summary.get("interrupted"):
            err.print(f"Interrupted at step {summary['final_step']}: checkpoint saved. Continue with: "
                      f"ctxssl pretrain --preset {preset} --out {out_dir} --resume")
        out.print(f"run: {out_dir}")
        for k in ("final_step", "total_steps", "loss", "nce", "aux", "aux_r2", "pairs_per_s"):
            if k in summary:
                v = summary[k]
                out.print(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}")
        if summary.get("interrupted"):
            raise typer.Exit(130)

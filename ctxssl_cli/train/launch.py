"""Starting or resuming a training run from a finished spec: the core behind `ctxssl pretrain`.

It decides everything the command line leaves open (where the run goes, which dataset it reads, whether the
folder may be used), renders the default benchmark on first use, sets up the process group, trains, and returns
what the CLI reports. Folder checks come first, so nothing is rendered or written for a command that is refused.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

from ctxssl_cli import paths
from ctxssl_cli.errors import CtxsslError
from ctxssl_cli.spec import RunSpec, spec_from_yaml_text
from ctxssl_cli.train import dist
from ctxssl_cli.train.loop import SPEC_NAME, claim_run_dir, pretrain, resume_command

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


@dataclass
class PretrainResult:
    run_dir: Path
    summary: dict
    is_main: bool  # rank 0 reports; the other ranks stay quiet
    resume_command: str  # the exact command that continues this run

    @property
    def interrupted(self) -> bool:
        return bool(self.summary.get("interrupted"))


def check_run_name(name: str) -> str:
    """A run name becomes a folder under the runs directory: one plain path component, nothing else."""
    if not NAME_RE.fullmatch(name or ""):
        raise CtxsslError(f"run name {name!r} is not a plain folder name",
                          "use letters, digits, '.', '_' and '-' only (no '/', no leading '.'), e.g. --name demo-a")
    return name


def default_run_dir(spec: RunSpec, resume: bool) -> Path:
    if resume:
        return paths.latest_run()
    return paths.runs_dir() / f"{check_run_name(spec.name)}-{time.strftime('%Y%m%d-%H%M%S')}"


# The built-in datasets (data.builtin): where they live and how `prepare_synthetic` renders them on first use.
BUILTIN_SYNTHETIC_IMAGES = {"layout": "images", "classes": 10, "objects_per_class": 200, "resolution": 64}


def resolve_data(path: str, is_main: bool, progress: bool = True, builtin: str = "synthetic") -> Path:
    """The folder of the prepared dataset named by the spec; the built-in dataset (data.builtin) is rendered on
    first use (by rank 0; the caller opens the folder after a barrier)."""
    from ctxssl_cli.data.prepared import is_prepared
    from ctxssl_cli.data.synthetic import check_renderer, synthetic_manifest

    if path:
        if path == "$CTXSSL_HOME" or path.startswith("$CTXSSL_HOME/"):  # presets name datasets under the home
            path = str(paths.home()) + path[len("$CTXSSL_HOME"):]
        p = Path(path).expanduser()
        if not p.exists():
            raise CtxsslError(f"dataset folder {p} does not exist",
                              "prepare one with `ctxssl prepare synthetic --out DIR` or `ctxssl prepare 3diebench`")
        return p
    images = builtin == "synthetic-images"
    p = paths.default_synthetic_images_dir() if images else paths.default_synthetic_dir()
    check_renderer(p, synthetic_manifest(p))
    if not is_prepared(p) and is_main:
        import sys

        from ctxssl_cli.data.synthetic import prepare_synthetic

        how = "`ctxssl prepare synthetic --layout images --objects-per-class 200`" if images else "`ctxssl prepare synthetic`"
        print(f"The built-in {builtin} dataset is not rendered yet: rendering it once into {p} (a few minutes on "
              f"2 cores; {how} does the same)", file=sys.stderr, flush=True)
        prepare_synthetic(p, progress=progress, **(BUILTIN_SYNTHETIC_IMAGES if images else {}))
    return p


def run_pretraining(spec: RunSpec, *, out_dir: Path | None = None, resume: bool = False, overwrite: bool = False,
                    device: str = "auto", compile_model: bool = False, progress: bool = True, tensorboard: bool = False,
                    on_start=None) -> PretrainResult:
    """Train `spec` (a finished spec: preset + overrides) into `out_dir` (default: runs/<name>-<time>, or with
    `resume` the latest run). `on_start(run_dir, data_dir, device, world)` is called on rank 0 before training."""
    check_run_name(spec.name)
    run_dir = Path(out_dir) if out_dir is not None else default_run_dir(spec, resume)
    claim_run_dir(run_dir, resume, overwrite, remove=False)  # refuse early; rank 0 removes files below
    if resume and not spec.data.path and (run_dir / SPEC_NAME).is_file():
        # a resumed run keeps reading the dataset it started with unless --data says otherwise
        spec.data.path = spec_from_yaml_text((run_dir / SPEC_NAME).read_text()).data.path
    info = dist.setup(device)
    try:
        if info.is_main and overwrite:
            claim_run_dir(run_dir, resume, overwrite=True)
        data_path = resolve_data(spec.data.path, info.is_main, progress, spec.data.builtin)
        dist.barrier(info)  # other ranks wait for rank 0 to render the default benchmark
        from ctxssl_cli.data.prepared import PreparedDataset

        dataset = PreparedDataset(data_path)
        spec.data.path = str(dataset.root.resolve())
        if info.is_main and on_start is not None:
            on_start(run_dir, dataset.root, info.device, info.world_size)
        summary = pretrain(spec, dataset, run_dir, info, resume=resume, compile_model=compile_model, tensorboard=tensorboard,
                           progress=progress)
    finally:
        dist.cleanup(info)
    return PretrainResult(run_dir=run_dir, summary=summary, is_main=info.is_main,
                          resume_command=resume_command(run_dir, device=device))

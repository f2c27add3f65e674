"""Default locations, so that the four quickstart commands work with no flags.

- Datasets live under $CTXSSL_HOME (default ~/.cache/ctxssl): rendered once, shared by every project.
- Runs live under $CTXSSL_RUNS (default ./runs): next to the work that made them, like nanoGPT's out/.
"""

from __future__ import annotations

import os
from pathlib import Path


def _env_dir(name: str, default: Path | str) -> Path:
    """$name as a folder; unset or empty (CTXSSL_HOME="") both mean the default, never the current folder."""
    value = os.environ.get(name, "").strip()
    return Path(value or default).expanduser()


def home() -> Path:
    return _env_dir("CTXSSL_HOME", Path.home() / ".cache" / "ctxssl")


def default_synthetic_dir() -> Path:
    """Where `ctxssl prepare synthetic` writes and `ctxssl pretrain` looks when --data is not given."""
    return home() / "datasets" / "synthetic"


def default_synthetic_images_dir() -> Path:
    """The built-in benchmark's views as a plain image dataset (`prepare synthetic --layout images`): the data of
    `data.builtin: synthetic-images` (the demo-2d preset)."""
    return home() / "datasets" / "synthetic-images"


def runs_dir() -> Path:
    return _env_dir("CTXSSL_RUNS", "runs")


def latest_run(runs: Path | None = None) -> Path:
    """The most recently started run (by its spec.yaml time) under the runs folder."""
    from ctxssl_cli.errors import CtxsslError

    runs = runs or runs_dir()
    cands = [p.parent for p in runs.glob("*/spec.yaml")] if runs.is_dir() else []
    if not cands:
        raise CtxsslError(f"no run found under {runs.resolve()}",
                          "train one first (ctxssl pretrain --preset demo) or pass --checkpoint RUN_DIR")
    return max(cands, key=lambda p: (p / "spec.yaml").stat().st_mtime)

"""Default locations, so that the four quickstart commands work with no flags.

- Datasets live under $CTXSSL_HOME (default ~/.cache/ctxssl): rendered once, shared by every project.
- Runs live under $CTXSSL_RUNS (default ./runs): next to the work that made them, like nanoGPT's out/.
"""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    return Path(os.environ.get("CTXSSL_HOME", Path.home() / ".cache" / "ctxssl")).expanduser()


def default_synthetic_dir() -> Path:
    """Where `ctxssl prepare synthetic` writes and `ctxssl pretrain` looks when --data is not given."""
    return home() / "datasets" / "synthetic"


def runs_dir() -> Path:
    return Path(os.environ.get("CTXSSL_RUNS", "runs")).expanduser()

"""Small file helpers shared by every command: atomic writes and content hashes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def tmp_path_for(path: Path) -> Path:
    """A sibling temp name (same filesystem, so os.replace is atomic); unique per process."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def commit(tmp: Path, final: Path) -> None:
    """fsync `tmp` then atomically move it over `final`: readers see the old or the new file, never a mix."""
    fsync_path(tmp)
    os.replace(tmp, final)


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    tmp = tmp_path_for(path)
    tmp.write_text(text)
    commit(tmp, path)


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()

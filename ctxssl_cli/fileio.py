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


def discard(tmp: Path) -> None:
    """Remove a temp file left by a failed write (no error if it is already gone)."""
    Path(tmp).unlink(missing_ok=True)


def commit(tmp: Path, final: Path) -> None:
    """fsync `tmp` then atomically move it over `final`: readers see the old or the new file, never a mix."""
    fsync_path(tmp)
    os.replace(tmp, final)


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically; see atomic_write_bytes."""
    atomic_write_bytes(path, text.encode())


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically (temp name unique to this process, fsync, rename)."""
    path = Path(path)
    tmp = tmp_path_for(path)
    try:
        tmp.write_bytes(data)
        commit(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise

"""Small file helpers shared by every command: atomic writes, content hashes, and naming the file behind an
OS error (a full disk, a read-only file system) so that the CLI's one-line message can say where it happened."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import sys
from pathlib import Path

_TMP_NAME = re.compile(r"^\.(?P<name>.+)\.tmp-\d+$")  # tmp_path_for's names
_OS_ERROR_TEXT = re.compile(r"\(os error (?P<errno>\d+)\)(?: at path \"(?P<path>[^\"]+)\")?")  # Rust's io::Error


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


def final_path_for(tmp: Path) -> Path:
    """The file a temp name of tmp_path_for stands for (`tmp` itself if it is not such a name)."""
    tmp = Path(tmp)
    m = _TMP_NAME.match(tmp.name)
    return tmp.with_name(m["name"]) if m else tmp


def os_error_of(e: BaseException, path: Path | str | None = None) -> OSError | None:
    """`e` as an OSError that names the file, or None if it is not an operating-system error.

    With `path` (the file being written), the error names it: write() on an open file names no file, and
    fsync or rename name the temp file (which the user never sees, and which is removed). safetensors reports
    the OS error of a failed save as text, "... (os error 28)": that becomes the OSError it stands for.
    """
    if isinstance(e, OSError):
        if e.errno is None or path is None or (e.filename == str(path) and e.filename2 is None):
            return e
        return OSError(e.errno, e.strerror or os.strerror(e.errno), str(path))
    if type(e).__name__ == "SafetensorError":
        m = _OS_ERROR_TEXT.search(str(e))
        if m:
            code = int(m["errno"])
            if path is None and m["path"]:  # safetensors' own temp name: only its folder means anything
                path = Path(m["path"]).parent
            return OSError(code, os.strerror(code), None if path is None else str(path))
    return None


def discard(tmp: Path) -> None:
    """Remove a temp file left by a failed write (no error if it is already gone).

    Called from an `except` block while an OSError that names no file is being handled (write() on an open
    file raises those: a full disk, a read-only file system), it also sets that error's filename to the file
    being written, so that the one-line message can say where; the error itself is left to propagate.
    """
    current = sys.exc_info()[1]
    if isinstance(current, OSError) and current.errno is not None and current.filename is None:
        current.filename = str(final_path_for(tmp))
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
    """Write `data` to `path` atomically (temp name unique to this process, fsync, rename).

    On any failure the temp file is removed (`path` keeps its old content, or stays absent); an OSError (a
    full disk, a read-only file system) is re-raised naming `path`.
    """
    path = Path(path)
    tmp = tmp_path_for(path)
    try:
        tmp.write_bytes(data)
        commit(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):  # the write's own error matters, not a failed clean-up
            discard(tmp)
        named = os_error_of(e, path)
        if named is None or named is e:
            raise
        raise named from e

"""The output folder of a prepare: one writer at a time, and --overwrite that never loses the old dataset.

Lock. `output_lock(OUT)` takes an exclusive, non-blocking `fcntl.flock` on the sibling file `.OUT.lock` (beside
OUT, not in it, so it survives the overwrite swap below and never shows up in OUT) and writes this process's pid
into it; a second prepare into the same OUT stops at once with one line naming that pid. The lock file is
removed on release (a process that opened it just before is detected by comparing inodes and retries).

Overwrite. The new dataset is built in the hidden sibling `.OUT.overwrite` and swapped in only when it is
complete (`swap_in`: OUT -> `.OUT.old-PID`, build -> OUT, then the old one is removed). A failed or interrupted
overwrite leaves the old dataset where it was; a crash in the middle of the swap is repaired by the next
`output_lock` of that OUT.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
from pathlib import Path

from ctxssl_cli.errors import CtxsslError

try:
    import fcntl
except ImportError:  # Windows: no flock; prepares are then not protected against each other
    fcntl = None


def _absolute(out) -> Path:
    path = Path(os.path.abspath(Path(out).expanduser()))
    if not path.name:
        raise CtxsslError(f"{out} cannot be an output folder", "choose a folder below the filesystem root for --out")
    return path


def lock_path(out) -> Path:
    out = _absolute(out)
    return out.with_name(f".{out.name}.lock")


def build_dir(out) -> Path:
    """Where an overwrite builds the new dataset: a hidden sibling of OUT (same filesystem: renames are atomic)."""
    out = _absolute(out)
    return out.with_name(f".{out.name}.overwrite")


def _old_dirs(out: Path) -> list[Path]:
    return sorted(Path(p) for p in glob.glob(str(out.with_name(f".{glob.escape(out.name)}.old-*"))))


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 64, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return f"pid {text}" if text.isdigit() else "another process"


@contextlib.contextmanager
def output_lock(out):
    """Hold the exclusive lock on output folder `out` for the duration of the block."""
    out = _absolute(out)
    if fcntl is None:
        yield None
        return
    path = lock_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            who = _holder(fd)
            os.close(fd)
            kill = f" (kill {who[4:]})" if who.startswith("pid") else ""
            raise CtxsslError(f"{out} is being written by another ctxssl prepare ({who}, lock file {path})",
                              f"wait for it to finish, or stop it{kill} and rerun this command to resume") from None
        try:
            here, there = os.fstat(fd), os.stat(path)
            same = (here.st_ino, here.st_dev) == (there.st_ino, there.st_dev)
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the previous holder removed the file between our open and our flock: lock the new one
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        _repair_swap(out)
        yield path
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


def swap_in(build: Path, out: Path) -> None:
    """Replace the folder `out` by the complete folder `build`: readers see the old or the new dataset."""
    out = _absolute(out)
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    os.rename(out, old)
    try:
        os.rename(build, out)
    except BaseException:
        os.rename(old, out)
        raise
    shutil.rmtree(old)


def discard_build(build: Path) -> None:
    shutil.rmtree(build, ignore_errors=True)


def _repair_swap(out: Path) -> None:
    """Finish a swap that a crash interrupted (called with the lock held): the build is only ever swapped in
    when complete, so OUT missing + a build present means "rename the build in"."""
    for old in _old_dirs(out):
        if not out.exists():
            build = build_dir(out)
            os.rename(build if build.is_dir() else old, out)
        if old.exists():
            shutil.rmtree(old)

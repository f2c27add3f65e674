"""Reading the files a user hands to `prepare` without surprises: regular files only, .npy without pickle, ids
that fit on one line.

- A FIFO, socket or device given where a file is expected is refused before it is read (reading one can block
  forever or never end): files are opened non-blocking and checked with fstat.
- `.npy` files are checked from their header (magic, dtype, and that the data size matches the shape) before
  numpy loads them with allow_pickle=False; an object array is refused (ctxssl never unpickles files).
- Object ids ("SYNSET/OBJ_ID") are stored one per line (object_ids.txt), so an id with a newline or another
  control character is refused.
"""

from __future__ import annotations

import io
import math
import os
import stat
import unicodedata
from pathlib import Path

import numpy as np

from ctxssl_cli.errors import CtxsslError

NPY_MAGIC = b"\x93NUMPY"


def file_kind(mode: int) -> str:
    """'a FIFO', 'a socket', 'a device', ... for a non-regular st_mode."""
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "not a regular file"


def read_regular_bytes(path, what: str, fix: str) -> bytes:
    """The bytes of `path`, refusing anything but a regular file. `what` names the file in messages
    ("split file", "labels file", ...)."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO opens at once instead of blocking
    except FileNotFoundError:
        raise CtxsslError(f"{what} {path} does not exist", fix) from None
    except IsADirectoryError:
        raise CtxsslError(f"{what} {path} is a folder, not a file", fix) from None
    except OSError as e:
        raise CtxsslError(f"{what} {path} cannot be opened ({e.strerror})", fix) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise CtxsslError(f"{what} {path} is {file_kind(mode)}, not a regular file", fix)
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    finally:
        os.close(fd)


def require_regular(path, what: str, fix: str) -> None:
    """Refuse `path` unless it is an existing regular file (symlinks followed)."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise CtxsslError(f"{what} {path} does not exist", fix) from None
    except OSError as e:
        raise CtxsslError(f"{what} {path} cannot be read ({e.strerror})", fix) from None
    if not stat.S_ISREG(mode):
        raise CtxsslError(f"{what} {path} is {file_kind(mode)}, not a regular file", fix)


def read_npy(data: bytes, where: str, fix: str, pickle_fix: str | None = None) -> np.ndarray:
    """The array in `data` (the bytes of a .npy file), or one CtxsslError naming `where` and what is wrong."""
    if not data.startswith(NPY_MAGIC):
        looks = " (it holds text)" if _looks_like_text(data) else ""
        raise CtxsslError(f"{where} is not a .npy file{looks}", fix)
    buf = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(buf)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(buf)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(buf)
        else:
            raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")
    except (ValueError, SyntaxError, TypeError, EOFError) as e:
        raise CtxsslError(f"{where} has a corrupt .npy header ({e})", fix) from None
    if dtype.hasobject:
        raise CtxsslError(f"{where} needs pickle to load (an object array); ctxssl never unpickles files",
                          pickle_fix or fix)
    want, have = math.prod(shape) * dtype.itemsize, len(data) - buf.tell()
    if want != have:
        raise CtxsslError(f"{where} is truncated or corrupt (its header promises {want} bytes of data, "
                          f"it holds {have})", fix)
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise CtxsslError(f"{where} is not a readable .npy array ({e})", fix) from None


def decode_text(data: bytes, where: str, fix: str) -> str:
    """`data` as UTF-8 text; a .npy or other binary file gives one clear error."""
    if data.startswith(NPY_MAGIC):
        raise CtxsslError(f"{where} is a .npy file but its name does not end in .npy", "rename it to end in .npy")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise CtxsslError(f"{where} is neither a .npy file nor UTF-8 text", fix) from None


def _looks_like_text(data: bytes) -> bool:
    head = data[:512]
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return bool(head) and b"\0" not in head


def bad_id_char(key: str) -> str | None:
    """The first character of `key` that cannot be stored in a one-id-per-line file (a control character or a
    line/paragraph separator), as a readable name, or None."""
    for ch in key:
        if unicodedata.category(ch) in ("Cc", "Zl", "Zp"):
            return {"\n": "a newline", "\r": "a carriage return", "\t": "a tab"}.get(ch, f"U+{ord(ch):04X}")
    return None


def check_object_id(key: str, where: str, fix: str) -> None:
    """Refuse an object id that contains a newline or another control character; `where` says where it came from."""
    bad = bad_id_char(key)
    if bad is not None:
        raise CtxsslError(f"object id {key!r} ({where}) contains {bad}", fix)

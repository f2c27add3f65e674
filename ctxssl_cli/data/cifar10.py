"""Pack CIFAR-10 (the binary version: an archive or its extracted folder) into the prepared format (SPEC §3.4).

Source: `cifar-10-binary.tar.gz` from https://www.cs.toronto.edu/~kriz/cifar.html, or its extracted folder
`cifar-10-batches-bin/` (or the folder that holds it) with `data_batch_1.bin`..`data_batch_5.bin`, `test_batch.bin`
and `batches.meta.txt`. A batch file is a run of 3073-byte records: 1 label byte, then 3072 pixel bytes (the 1024
R values, then G, then B, each plane row-major 32x32). `batches.meta.txt` names the classes, one per line.
The python version (`cifar-10-python.tar.gz`, `cifar-10-batches-py/`) is pickled and refused: ctxssl never
unpickles (its files are never opened).

An archive is read as a stream twice: pass 1 checks every member's header (regular files and folders only, no
absolute path, no '..', no links or devices, no pickled batches, the expected files present once with whole
record sizes) before any data is read; pass 2 reads only the expected members into memory (about 184 MB).
Nothing is extracted.

The 50,000 train records (data_batch_1..5, in order) become split `train`, the 10,000 test records split `val`.
Object ids are `CLASS/NNNNN`, NNNNN the record's position in data_batch_1..5 then test_batch (0-49,999 train,
50,000-59,999 test), so ids are unique across splits. Each object is one 32x32 image (n_views = 1) with no stored
latents (shape (1, 0)): training views are made later by the parameterised 2D augmentations (action schema
`augment2d`). The work per image is tiny, so it runs in this process (fill_chunks with workers=1).
"""

from __future__ import annotations

import gzip
import lzma
import re
import stat
import tarfile
import time
import zlib
from pathlib import Path, PurePosixPath

import numpy as np

from ctxssl_cli.data.inputs import check_object_id, file_kind, read_regular_bytes
from ctxssl_cli.errors import CtxsslError

URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
BIN_DIR = "cifar-10-batches-bin"
PY_DIR = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILE = "test_batch.bin"
META_FILE = "batches.meta.txt"
EXPECTED = (*TRAIN_FILES, TEST_FILE, META_FILE)
PICKLED = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")  # the python version's files
RESOLUTION = 32
RECORD = 1 + 3 * RESOLUTION * RESOLUTION  # 3073 bytes: label + R, G, B planes
MAX_META_BYTES = 1 << 20  # batches.meta.txt is 61 bytes; a huge one is not CIFAR's
_GET = f"download the binary version, cifar-10-binary.tar.gz, from {URL}"
_REDOWNLOAD = f"re-download cifar-10-binary.tar.gz from {URL}"
_HINT = (f"pass cifar-10-binary.tar.gz or its extracted folder {BIN_DIR}/ (data_batch_1.bin..data_batch_5.bin, "
         f"test_batch.bin, batches.meta.txt); {_GET}")
_CORRUPT = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError)  # a damaged archive


def pack_cifar10(source, out, *, codec="raw", overwrite=False, progress=True, workers=1, jpeg_quality=None) -> dict:
    """Pack CIFAR-10 (binary) at `source` into a prepared dataset at `out`; returns a summary (counts, size, ...)."""
    from ctxssl_cli.data.outdir import output_lock

    t0 = time.perf_counter()
    source = Path(source).expanduser()
    files, where = read_source(source)  # everything is checked before --out is touched
    classes = parse_classes(files[META_FILE], where)
    batches = {name: _records(files[name], name, where, len(classes)) for name in (*TRAIN_FILES, TEST_FILE)}
    with output_lock(out):
        summary = _write(Path(out), source, classes, batches, codec, overwrite, progress, workers, jpeg_quality)
    seconds = time.perf_counter() - t0
    n = sum(summary["counts"].values())
    summary.update(seconds=round(seconds, 1), images_per_s=round(n / max(seconds, 1e-9), 1))
    return summary


def _write(out: Path, source: Path, classes, batches, codec, overwrite, progress, workers, jpeg_quality) -> dict:
    from ctxssl_cli.data import prepared
    from ctxssl_cli.data.prepared_writer import PreparedWriter, fill_chunks, require_train_and_val
    from ctxssl_cli.data.schema import AUGMENT2D

    is_archive = source.is_file()
    src = {"kind": "archive" if is_archive else "folder", "name": source.name,
           **({"bytes": source.stat().st_size} if is_archive else {})}
    with PreparedWriter(out, dataset="cifar10", resolution=RESOLUTION, codec=codec, settings={"source": src},
                        overwrite=overwrite, jpeg_quality=jpeg_quality or prepared.JPEG_QUALITY) as writer:
        train = [batches[name] for name in TRAIN_FILES]
        records = {"train": np.concatenate(train), "val": batches[TEST_FILE]}
        n_train = len(records["train"])
        splits = {}
        for split, first in (("train", 0), ("val", n_train)):
            labels = records[split][:, 0].astype(np.int64)
            ids = [f"{classes[lab]}/{first + i:05d}" for i, lab in enumerate(labels.tolist())]
            splits[split] = (ids, labels)
        require_train_and_val(splits, f"the batch files hold no records: {_GET}")
        writer.plan(n_views=1, classes=classes, splits=splits, split_source="published (data batches / test batch)",
                    source=dict(src, url=URL, layout="binary (label byte + R, G, B planes, 32x32)"),
                    action_schema=AUGMENT2D.to_manifest())
        quality = writer.jpeg_quality

        def task(split, i):
            return records[split][i].tobytes(), codec, quality

        fill_chunks(writer, task, process_record, workers=workers, progress=progress,
                    label=f"packing CIFAR-10 ({codec})")
        return writer.finalize()


def process_record(task):
    """One record -> (payload, latents (1, 0) float32, hist (3, 256)); runs in a worker or in-process."""
    from ctxssl_cli.data.prepared import encode_views

    record, codec, quality = task
    planes = np.frombuffer(record, np.uint8)[1:].reshape(3, RESOLUTION, RESOLUTION)  # (3, H, W): R, G, B planes
    payload, hist = encode_views(planes.transpose(1, 2, 0)[None], codec, quality)  # (1, H, W, 3) in
    return payload, np.zeros((1, 0), np.float32), hist


# -- reading the source ----------------------------------------------------------------------------------------
def read_source(source: Path) -> tuple[dict, str]:
    """The bytes of the expected files (name -> bytes) and a description of where they came from."""
    try:
        mode = source.stat().st_mode
    except FileNotFoundError:
        raise CtxsslError(f"source {source} does not exist", _HINT) from None
    if source.name.startswith("cifar-10-python") or source.name == PY_DIR:
        _refuse_pickled(source.name)
    if stat.S_ISDIR(mode):
        folder = _find_folder(source)
        return _read_folder(folder), str(folder)
    if not stat.S_ISREG(mode):
        raise CtxsslError(f"source {source} is {file_kind(mode)}, not a folder or a .tar.gz file", _HINT)
    return _read_archive(source), f"archive {source.name}"


def _refuse_pickled(what: str):
    raise CtxsslError(f"{what} is the python version of CIFAR-10, whose batches are pickled (ctxssl never unpickles "
                      "files; nothing was opened)",
                      f"{_GET} and pass that archive or its extracted {BIN_DIR}/ folder")


def _find_folder(path: Path) -> Path:
    if (path / TRAIN_FILES[0]).exists():
        return path
    if (path / BIN_DIR).is_dir():
        return path / BIN_DIR
    if (path / PICKLED[0]).exists():
        _refuse_pickled(str(path))
    if (path / PY_DIR).is_dir():
        _refuse_pickled(str(path / PY_DIR))
    raise CtxsslError(f"no CIFAR-10 binary batches in {path}", _HINT)


def _read_folder(folder: Path) -> dict:
    files = {}
    for name in EXPECTED:
        path = folder / name
        if not path.exists():
            raise CtxsslError(f"{path} is missing", f"re-extract the archive, or {_GET}")
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode):
            raise CtxsslError(f"{path} is {file_kind(mode)}, not a regular file", f"re-extract the archive, or {_GET}")
        _check_size(name, path.stat().st_size, str(path))
        files[name] = read_regular_bytes(path, "file", f"re-extract the archive, or {_GET}")
        _check_size(name, len(files[name]), str(path))  # it changed while we looked
    return files


def _check_size(name: str, size: int, where: str, fix: str = f"re-extract the archive, or {_GET}") -> None:
    if name == META_FILE:
        if size > MAX_META_BYTES:
            raise CtxsslError(f"{where} is {size:,} bytes, not CIFAR-10's list of class names", fix)
    elif size % RECORD:
        raise CtxsslError(f"{where} is {size:,} bytes, not a whole number of {RECORD}-byte records (truncated or not "
                          f"a CIFAR-10 binary batch; each holds 10,000 records, {10_000 * RECORD:,} bytes)", fix)


def _member_parts(m: tarfile.TarInfo, archive: str) -> tuple[str, ...]:
    """Refuse an unsafe member (absolute path, '..', link, device) and the python version's files."""
    name, fix = m.name, f"use the original cifar-10-binary.tar.gz ({URL}); nothing was extracted"
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if PY_DIR in parts or (m.isfile() and parts and parts[-1] in PICKLED):
        _refuse_pickled(f"archive {archive} (member {name!r})")
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise CtxsslError(f"archive member {name!r} has an absolute path (unsafe)", fix)
    if ".." in parts:
        raise CtxsslError(f"archive member {name!r} points outside the dataset with '..' (unsafe)", fix)
    if m.issym() or m.islnk():
        raise CtxsslError(f"archive member {name!r} is a link (unsafe)", fix)
    if not (m.isfile() or m.isdir()):
        raise CtxsslError(f"archive member {name!r} is a device or special file (unsafe)", fix)
    return parts


def _stream(archive: Path):
    """The members of `archive`, read as one stream (tarfile 'r|*'): yields (tarfile, member)."""
    try:
        with open(archive, "rb") as raw, tarfile.open(fileobj=raw, mode="r|*", bufsize=1 << 20) as tf:
            for m in tf:
                yield tf, m
    except _CORRUPT as e:
        raise _corrupt(archive, e) from None


def _corrupt(archive: Path, e: Exception) -> CtxsslError:
    return CtxsslError(f"archive {archive.name} is truncated, corrupt or not a tar archive ({e})",
                       _REDOWNLOAD)


def _read_archive(archive: Path) -> dict:
    # pass 1: headers only -- every member is checked before any data is read
    expected: dict[str, tuple[str, int]] = {}  # name -> (member path, size)
    for _, m in _stream(archive):
        parts = _member_parts(m, archive.name)
        if not parts or parts[-1] not in EXPECTED:
            continue  # readme.html, folders
        name = parts[-1]
        if not m.isfile():
            raise CtxsslError(f"archive member {m.name!r} is not a regular file", _REDOWNLOAD)
        if name in expected:
            raise CtxsslError(f"archive {archive.name} holds {name} twice ({expected[name][0]!r} and {m.name!r})",
                              _REDOWNLOAD)
        _check_size(name, m.size, f"archive member {m.name!r}", _REDOWNLOAD)
        expected[name] = (m.name, m.size)
    missing = [n for n in EXPECTED if n not in expected]
    if missing:
        raise CtxsslError(f"archive {archive.name} lacks {', '.join(missing)}", _HINT)
    # pass 2: read the expected members (and nothing else)
    wanted = {path: (name, size) for name, (path, size) in expected.items()}
    files = {}
    for tf, m in _stream(archive):
        if m.name in wanted:
            name, size = wanted[m.name]
            if not m.isfile() or m.size != size:
                raise CtxsslError(f"archive {archive.name} changed while it was read", "run the command again")
            try:
                files[name] = tf.extractfile(m).read()
            except _CORRUPT as e:
                raise _corrupt(archive, e) from None
    if len(files) != len(EXPECTED):
        raise CtxsslError(f"archive {archive.name} changed while it was read", "run the command again")
    return files


# -- parsing ---------------------------------------------------------------------------------------------------
def parse_classes(data: bytes, where: str) -> list[str]:
    """Class names from batches.meta.txt: one per line, blank lines ignored."""
    fix = f"re-extract the archive, or {_GET}"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise CtxsslError(f"{META_FILE} in {where} is not UTF-8 text", fix) from None
    classes = [ln.strip() for ln in text.split("\n") if ln.strip()]
    if not classes:
        raise CtxsslError(f"{META_FILE} in {where} names no classes", fix)
    for c in classes:
        check_object_id(c, f"class name in {META_FILE}", fix)
        if "/" in c or c in (".", ".."):
            raise CtxsslError(f"class name {c!r} in {META_FILE} ({where}) cannot be part of an object id", fix)
    dup = next((c for i, c in enumerate(classes) if c in classes[:i]), None)
    if dup is not None:
        raise CtxsslError(f"{META_FILE} in {where} names class {dup!r} twice", fix)
    return classes


def _records(data: bytes, name: str, where: str, n_classes: int) -> np.ndarray:
    """(n, 3073) uint8 records of one batch file, labels checked against the class list."""
    records = np.frombuffer(data, np.uint8).reshape(-1, RECORD)  # (n, 1 + 3072)
    bad = np.nonzero(records[:, 0] >= n_classes)[0]
    if len(bad):
        raise CtxsslError(f"{name} in {where}: record {int(bad[0])} has label {int(records[bad[0], 0])}, but "
                          f"{META_FILE} names {n_classes} classes", f"re-extract the archive, or {_GET}")
    return records

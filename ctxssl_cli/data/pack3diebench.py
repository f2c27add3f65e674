"""Pack a local copy of 3DIEBench (an extracted folder or the .tar.gz itself) into the prepared format.

Source layout (SPEC §3.2): [PREFIX/]SYNSET/OBJ_ID/image_{i}.jpg + latent_{i}.npy, i = 0..V-1, the same V for
every object (50 in 3DIEBench), 256x256 JPEG, latents of 7 floats.

Steps:
1. Find the objects. A folder is scanned. An archive is read once as a stream (tarfile 'r|*'), every member
   checked (no absolute path, no '..', no links or devices), and each object's original files are staged
   as one file under OUT/.incomplete/staging/ (never one file per image, never outside OUT). A rerun of an
   interrupted stream skips objects already staged.
2. Split: the published SIE split files when given, otherwise a class-stratified 80/20 split (seed 0).
3. A spawn process pool (workers = os.cpu_count() by default) decodes, checks and resizes each object's
   views and encodes them; the main process writes chunk files in order (resumable per chunk).

Resizing: Pillow `resize((r, r), BILINEAR)`, which is antialiased (its filter support scales with the
reduction) and is exactly what the published code's `torchvision.transforms.Resize` does on PIL images,
so raw-codec images equal the pixels the published pipeline fed its network.
"""

from __future__ import annotations

import io
import re
import stat
import tarfile
import time
import zlib
from pathlib import Path, PurePosixPath

import numpy as np
import yaml

from ctxssl_cli.data.inputs import check_object_id, file_kind, read_npy, read_regular_bytes, require_regular
from ctxssl_cli.errors import CtxsslError
from ctxssl_cli.fileio import atomic_write_text, commit, discard, tmp_path_for

IMAGE_RE = re.compile(r"image_(\d+)\.jpg")
LATENT_RE = re.compile(r"latent_(\d+)\.npy")
_ID_FIX = "object ids are stored one per line: rename that folder so its name has no newline or control character"
_HINT = "expected SYNSET/OBJ_ID/image_{i}.jpg and latent_{i}.npy (the extracted 3DIEBench folder or its .tar.gz)"


def pack_3diebench(source, out, *, resolution=128, codec="jpeg", train_list=None, val_list=None,
                   train_labels=None, val_labels=None, workers=None, overwrite=False, progress=True,
                   jpeg_quality=None) -> dict:
    """Pack 3DIEBench at `source` into a prepared dataset at `out`; returns a summary (counts, size, ...)."""
    from ctxssl_cli.data.outdir import output_lock

    t0 = time.perf_counter()
    source = Path(source).expanduser()
    if not source.exists():
        raise CtxsslError(f"source {source} does not exist",
                          "pass the extracted 3DIEBench folder or 3DIEBench.tar.gz to --source")
    mode = source.stat().st_mode
    if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
        raise CtxsslError(f"source {source} is {file_kind(mode)}, not a folder or a .tar.gz file",
                          "pass the extracted 3DIEBench folder or 3DIEBench.tar.gz to --source")
    if (train_list is None) != (val_list is None):
        raise CtxsslError("only one of the train/val split lists was given", "pass both --train-list and --val-list")
    if (train_labels is None) != (val_labels is None) or (train_labels is not None and train_list is None):
        raise CtxsslError("label files need both split lists and both label files",
                          "pass --train-list, --val-list, --train-labels and --val-labels together")
    if int(resolution) < 8:
        raise CtxsslError(f"resolution {resolution} is too small", "use e.g. 128 (the paper) or 64")
    lists = [train_list, val_list, train_labels, val_labels]
    for p in lists:
        if p is not None:
            require_regular(p, "split file", "check the paths given to --train-list/--val-list/--train-labels/"
                            "--val-labels")
    with output_lock(out):
        summary, n_views = _pack(source, Path(out), resolution, codec, lists, workers, overwrite, progress,
                                 jpeg_quality)
    seconds = time.perf_counter() - t0
    summary.update(unused_objects=summary.pop("objects_found") - sum(summary["counts"].values()),
                   seconds=round(seconds, 1),
                   views_per_s=round(sum(summary["counts"].values()) * n_views / max(seconds, 1e-9), 1))
    return summary


def _pack(source: Path, out: Path, resolution, codec, lists, workers, overwrite, progress, jpeg_quality):
    """The packing itself, with the output lock held; returns (summary, views per object)."""
    from ctxssl_cli.data import prepared
    from ctxssl_cli.data.prepared_writer import PreparedWriter

    is_archive, keys, locate = source.is_file(), None, None
    if not is_archive:  # check the layout before touching --out
        keys, locate = _scan_folder(source, exclude=Path(out))
    settings = {"source": {"kind": "archive" if is_archive else "folder", "name": source.name,
                           **({"bytes": source.stat().st_size} if is_archive else {})},
                "split_files": [_file_digest(p) for p in lists]}
    with PreparedWriter(out, dataset="3diebench", resolution=resolution, codec=codec, settings=settings,
                        overwrite=overwrite, jpeg_quality=jpeg_quality or prepared.JPEG_QUALITY) as writer:
        return _fill(writer, source, is_archive, keys, locate, settings, lists, codec, resolution, workers,
                     progress)


def _fill(writer, source, is_archive, keys, locate, settings, lists, codec, resolution, workers, progress):
    """Steps 1-3 into the claimed writer; returns (summary with objects_found, views per object)."""
    from ctxssl_cli.data import prepared
    from ctxssl_cli.data.prepared_writer import fill_chunks, require_train_and_val

    # 1. objects (an archive is staged inside --out, so only now)
    if is_archive:
        keys, locate = _stage_archive(source, writer.work / "staging", progress)
    n_views = _count_views(keys[0], locate(keys[0]))
    if n_views < 2:
        raise CtxsslError(f"object {keys[0]} in {source} has only image_0.jpg: training pairs need at least 2 "
                          "views of every object", "use a source with image_0.jpg, image_1.jpg, ... per object "
                          "(3DIEBench has 50)")
    # 2. split
    splits, classes, split_source = _make_splits(keys, source, *lists)
    require_train_and_val(splits, "give some synset at least 2 objects (a stratified split keeps one of each "
                          "class for train), or pass --train-list/--val-list that each name at least one object")
    writer.plan(n_views=n_views, classes=classes, splits=splits, split_source=split_source,
                source=dict(settings["source"], objects_found=len(keys),
                            resize="Pillow BILINEAR (antialiased), as torchvision Resize on PIL images"),
                mean=prepared.PAPER_MEAN, std=prepared.PAPER_STD)
    # 3. decode + resize + encode in parallel, write chunks in order
    quality = writer.jpeg_quality

    def task(split, i):
        key = splits[split][0][i]
        return key, locate(key), n_views, writer.resolution, codec, quality

    fill_chunks(writer, task, process_object, workers=workers, progress=progress,
                         label=f"packing 3DIEBench ({codec}, {resolution} px)")
    return dict(writer.finalize(), objects_found=len(keys)), n_views


def _file_digest(path):
    if path is None:
        return None
    import hashlib

    return hashlib.sha256(read_regular_bytes(path, "split file", "check the path")).hexdigest()


# -- 1a. folder ------------------------------------------------------------------------------------------------
def _subdirs(p: Path) -> list[Path]:
    return sorted(d for d in p.iterdir() if d.is_dir() and not d.name.startswith("."))


def _has_layout(p: Path) -> bool:
    for syn in _subdirs(p):
        for obj in _subdirs(syn)[:1]:
            if any(IMAGE_RE.fullmatch(f.name) for f in obj.iterdir()):
                return True
    return False


def _scan_folder(root: Path, exclude: Path | None = None):
    if not _has_layout(root):
        subs = _subdirs(root)
        if len(subs) == 1 and _has_layout(subs[0]):
            root = subs[0]  # a single top-level folder, e.g. .../3DIEBench/
        else:
            raise CtxsslError(f"no 3DIEBench objects found in {root}", _HINT)
    keys = []
    skip = exclude.resolve() if exclude is not None else None
    for syn in _subdirs(root):
        if syn.resolve() == skip:
            continue  # --out inside --source
        objs = _subdirs(syn)
        if not objs:
            raise CtxsslError(f"synset folder {syn.name} holds no objects",
                              f"remove the empty folder {syn} or re-extract the archive")
        for o in objs:
            check_object_id(f"{syn.name}/{o.name}", f"folder {o}", _ID_FIX)
        keys += [f"{syn.name}/{o.name}" for o in objs]
    return keys, lambda key: ("folder", str(root / key))


# -- 1b. archive -----------------------------------------------------------------------------------------------
def _member_parts(m: tarfile.TarInfo) -> tuple[str, ...]:
    name = m.name
    if name.startswith("/") or name.startswith("\\") or re.match(r"^[A-Za-z]:", name):
        raise CtxsslError(f"archive member {name!r} has an absolute path (unsafe)",
                          "use the original 3DIEBench archive; nothing was extracted")
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if ".." in parts:
        raise CtxsslError(f"archive member {name!r} points outside the dataset with '..' (unsafe)",
                          "use the original 3DIEBench archive; nothing was extracted")
    if m.issym() or m.islnk():
        raise CtxsslError(f"archive member {name!r} is a link (unsafe)",
                          "use the original 3DIEBench archive, or extract it and pass the folder")
    if not (m.isfile() or m.isdir()):
        raise CtxsslError(f"archive member {name!r} is a device or special file (unsafe)",
                          "use the original 3DIEBench archive")
    return parts


def _stage_archive(archive: Path, staging: Path, progress: bool):
    """Stream the archive once; stage each object's files as staging/SYNSET/OBJ.st (safetensors of raw bytes)."""
    from safetensors.numpy import save_file

    from ctxssl_cli.data.parallel import track

    index_file = staging / "index.yaml"
    if not index_file.exists():
        staging.mkdir(parents=True, exist_ok=True)
        existing = {p.relative_to(staging).with_suffix("").as_posix() for p in staging.glob("*/*.st")}
        prefix, current, pending, seen, dirs = None, None, {}, set(), set()

        def flush():
            if current is not None and current not in existing:
                path = staging / f"{current}.st"
                path.parent.mkdir(exist_ok=True)
                tmp = tmp_path_for(path)
                try:
                    save_file({k: np.frombuffer(v, np.uint8) for k, v in pending.items()}, str(tmp))
                    commit(tmp, path)
                except BaseException:
                    discard(tmp)
                    raise

        size = archive.stat().st_size
        with open(archive, "rb") as raw, track("reading archive", total=max(1, size >> 20), unit="MiB",
                                               enabled=progress) as advance:
            pos = 0
            try:
                with tarfile.open(fileobj=raw, mode="r|*", bufsize=1 << 20) as tf:
                    for m in tf:
                        parts = _member_parts(m)
                        if m.isdir():
                            dirs.add(parts)
                            continue
                        fname = parts[-1]
                        if len(parts) < 3 or not (IMAGE_RE.fullmatch(fname) or LATENT_RE.fullmatch(fname)):
                            continue  # not part of the layout (README, .DS_Store, ...)
                        if prefix is None:
                            prefix = parts[:-3]
                        elif parts[:-3] != prefix:
                            raise CtxsslError(f"archive member {m.name!r} is not under {'/'.join(prefix) or 'the root'}"
                                              " like the others", _HINT)
                        key = f"{parts[-3]}/{parts[-2]}"
                        check_object_id(key, f"archive member {m.name!r}", "use the original 3DIEBench archive")
                        if key != current:
                            flush()
                            if key in seen:
                                raise CtxsslError(f"archive files of object {key} are not stored together",
                                                  "extract the archive and pass the folder to --source")
                            seen.add(key)
                            current, pending = key, {}
                        if key not in existing:
                            pending[fname] = tf.extractfile(m).read()
                        new = raw.tell() >> 20
                        advance(new - pos)
                        pos = new
                flush()
            except (tarfile.TarError, EOFError, zlib.error) as e:
                raise CtxsslError(f"archive {archive.name} is truncated or corrupt ({e})",
                                  "re-download it, or extract it and pass the folder to --source") from None
        if prefix is None:
            raise CtxsslError(f"no 3DIEBench objects found in archive {archive.name}", _HINT)
        synsets = {parts[len(prefix)] for parts in dirs
                   if len(parts) == len(prefix) + 1 and parts[:len(prefix)] == prefix
                   and not parts[-1].startswith(".")}
        empty = sorted(synsets - {k.split("/")[0] for k in seen})
        if empty:
            raise CtxsslError(f"synset folder {empty[0]} holds no objects",
                              "use a complete archive (re-download it), or extract it, remove the empty folder, "
                              "and pass the folder")
        atomic_write_text(index_file, yaml.safe_dump({"objects": sorted(seen)}))
    keys = yaml.safe_load(index_file.read_text())["objects"]
    return keys, lambda key: ("staged", str(staging / f"{key}.st"))


# -- 2. split ------------------------------------------------------------------------------------------------
def _make_splits(keys, source, train_list, val_list, train_labels, val_labels):
    from ctxssl_cli.data.splits import read_labels, read_split_list, stratified_split

    synsets = sorted({k.split("/")[0] for k in keys})
    syn_index = {s: i for i, s in enumerate(synsets)}
    if train_list is None:
        labels = np.array([syn_index[k.split("/")[0]] for k in keys], np.int64)
        tr, va = stratified_split(keys, labels, val_fraction=0.2, seed=0)
        return ({"train": ([keys[i] for i in tr], labels[tr]), "val": ([keys[i] for i in va], labels[va])},
                synsets, "stratified-seed-0")
    known = set(keys)
    lists = {"train": read_split_list(train_list), "val": read_split_list(val_list)}
    for name, path in (("train", train_list), ("val", val_list)):
        missing = next((k for k in lists[name] if k not in known), None)
        if missing:
            raise CtxsslError(f"split file {Path(path).name} names object {missing}, which is not in {source}",
                              "pass split files that match this copy of 3DIEBench, or leave them out for a "
                              "stratified split")
    both = next((k for k in lists["train"] if k in set(lists["val"])), None)
    if both:
        raise CtxsslError(f"object {both} is in both the train and the val split files", "fix the split files")
    if train_labels is None:
        labels = {n: np.array([syn_index[k.split("/")[0]] for k in lists[n]], np.int64) for n in lists}
        classes = synsets
    else:
        labels = {"train": read_labels(train_labels, len(lists["train"])),
                  "val": read_labels(val_labels, len(lists["val"]))}
        classes = _classes_from_labels(lists, labels)
    return {n: (lists[n], labels[n]) for n in lists}, classes, "published"


def _classes_from_labels(lists, labels) -> list[str]:
    """Class names by label from the synsets of the labelled objects; each label must be one synset."""
    by_label: dict[int, str] = {}
    for n in lists:
        for key, lab in zip(lists[n], labels[n].tolist()):
            syn = key.split("/")[0]
            if by_label.setdefault(lab, syn) != syn:
                raise CtxsslError(f"the label files give label {lab} to synsets {by_label[lab]} and {syn}",
                                  "pass the label files that belong to these split lists")
    n_classes = max(by_label) + 1 if by_label else 0
    return [by_label.get(i, f"class_{i}") for i in range(n_classes)]


# -- 3. one object, in a worker ------------------------------------------------------------------------------
def _read_object(key: str, where) -> dict:
    kind, path = where
    if kind == "staged":
        from safetensors.numpy import load_file

        return {k: v.tobytes() for k, v in load_file(path).items()}
    files = {}
    for f in Path(path).iterdir():
        if IMAGE_RE.fullmatch(f.name) or LATENT_RE.fullmatch(f.name):
            mode = f.stat().st_mode if f.exists() else 0
            if not stat.S_ISREG(mode):
                what = file_kind(mode) if mode else "a broken link"
                raise CtxsslError(f"object {key}: {f.name} is {what}, not a regular file",
                                  f"replace {f} by the real file (re-extract that object)")
            files[f.name] = f
    return files  # values are Paths, read lazily


def _count_views(key: str, where) -> int:
    names = _read_object(key, where)
    n = sum(1 for f in names if IMAGE_RE.fullmatch(f))
    if n == 0:
        raise CtxsslError(f"object {key} has no image_{{i}}.jpg files", _HINT)
    return n


def process_object(task):
    """Worker: (key, where, V, resolution, codec, quality) -> (payload, latents (V, 7) float32, hist (3, 256))."""
    from PIL import Image, UnidentifiedImageError

    from ctxssl_cli.data.prepared import encode_views

    key, where, n_views, res, codec, quality = task
    files = _read_object(key, where)
    views = sorted(int(IMAGE_RE.fullmatch(f).group(1)) for f in files if IMAGE_RE.fullmatch(f))
    if views != list(range(n_views)):
        extra = sorted(set(views) - set(range(n_views)))
        what = (f"has extra view image_{extra[0]}.jpg" if extra else
                f"lacks image_{min(set(range(n_views)) - set(views))}.jpg")
        raise CtxsslError(f"object {key} {what} (objects must all have image_0..image_{n_views - 1})",
                          "re-extract or re-download that object")
    images = np.empty((n_views, res, res, 3), np.uint8)  # (V, H, W, 3)
    latents = np.empty((n_views, 7), np.float32)
    for i in range(n_views):
        lat_name = f"latent_{i}.npy"
        if lat_name not in files:
            raise CtxsslError(f"object {key} lacks {lat_name}", "re-extract or re-download that object")
        data = _bytes(files[f"image_{i}.jpg"])
        try:
            im = Image.open(io.BytesIO(data))
            im.load()
            im = im.convert("RGB")
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
            raise CtxsslError(f"object {key} view {i}: image_{i}.jpg is truncated or corrupt ({e})",
                              "re-extract or re-download that object") from None
        if im.size != (res, res):
            im = im.resize((res, res), Image.BILINEAR)
        images[i] = np.asarray(im)
        latents[i] = _load_latent(_bytes(files[lat_name]), key, i)
    payload, hist = encode_views(images, codec, quality)
    return payload, latents, hist


def _bytes(v) -> bytes:
    return v if isinstance(v, bytes) else read_regular_bytes(v, "file", "re-extract that object")


def _load_latent(data: bytes, key: str, i: int) -> np.ndarray:
    from ctxssl_cli.data.rotations import check_latents

    arr = read_npy(data, f"object {key} view {i}: latent_{i}.npy", "re-extract or re-download that object")
    if arr.size != 7 or arr.ndim > 2 or arr.dtype.kind not in "fiu":
        raise CtxsslError(f"object {key} view {i}: latent_{i}.npy has shape {arr.shape} ({arr.dtype}), expected 7 "
                          "floats", "re-extract or re-download that object")
    arr = arr.astype(np.float32).reshape(7)
    check_latents(arr, f"object {key} view {i}")
    return arr

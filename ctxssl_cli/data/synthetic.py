"""`prepare_synthetic`: render the built-in synthetic 3D benchmark (SPEC §3.1) in parallel, resumably.

layout="prepared" writes the prepared format (raw codec; normalisation computed over the train split).
layout="images" writes the prepared format of an augment2d dataset (SPEC §3.4): one rendered view per object,
no latents, views made later by the 2D augmentation pipeline (the `demo-2d` preset's data, no download).
layout="3diebench" writes 3DIEBench's on-disk layout (SYNSET/OBJ_ID/image_i.jpg + latent_i.npy, via
raw_layout.write_raw_object, atomic per object) so that the real-data path can be tested end to end; a
hidden marker file `.ctxssl_raw.yaml` records the settings and completion (the packer ignores hidden files).
Both layouts hold the output lock (data/outdir.py) while writing; --overwrite renders into a folder beside the
old dataset and swaps it in when complete.

Object ids are "SYNSET/OBJ" with SYNSET = raw_layout.synset_name(class) and OBJ = f"{obj:05d}", the same in
both layouts; the split is class-stratified 80/20 by object with the dataset seed.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import numpy as np
import yaml

from ctxssl_cli.data.outdir import build_dir, output_lock, swap_in
from ctxssl_cli.errors import CtxsslError
from ctxssl_cli.fileio import atomic_write_text

RAW_MARKER = ".ctxssl_raw.yaml"
_RAW_TEMP = re.compile(r"\.\.ctxssl_raw\.yaml\.tmp-\d+|\.ctxssl_raw\.yaml\.tmp")  # its temp names (now, before)
LAYOUTS = ("prepared", "images", "3diebench")


def prepare_synthetic(out, *, classes=10, objects_per_class=50, views=50, resolution=64, seed=0,
                      layout="prepared", workers=None, overwrite=False, progress=True) -> dict:
    """Render classes x objects_per_class objects x views views at `resolution` px into `out`.

    Returns a summary: out, layout, counts, views, seconds, views_per_s, size_bytes (on disk).
    """
    from ctxssl_cli.data.render import CLASS_NAMES, RENDER_VERSION

    if layout not in LAYOUTS:
        raise CtxsslError(f"unknown layout {layout!r}", f"use one of: {', '.join(LAYOUTS)}")
    if not 1 <= int(classes) <= len(CLASS_NAMES):
        raise CtxsslError(f"classes={classes} is out of range", f"the renderer has 1..{len(CLASS_NAMES)} classes")
    if int(objects_per_class) < 2:
        raise CtxsslError(f"objects_per_class={objects_per_class} must be >= 2 (the val split holds one object "
                          "of each class or more, the train split the rest)", "use e.g. 50")
    if layout == "images":
        views = 1  # one plain image per object
    elif int(views) < 2:
        raise CtxsslError(f"views={views} must be >= 2 (pairs need two distinct views)", "use e.g. 50")
    if int(resolution) < 8:
        raise CtxsslError(f"resolution={resolution} is too small", "use e.g. 64")
    classes, objects_per_class, views, resolution = int(classes), int(objects_per_class), int(views), int(resolution)
    source = {"kind": "synthetic", "seed": int(seed), "classes": classes, "objects_per_class": objects_per_class,
              "views": views, "renderer_version": RENDER_VERSION}
    t0 = time.perf_counter()
    with output_lock(out):
        if layout in ("prepared", "images"):
            summary = _prepare(Path(out), source, resolution, CLASS_NAMES[:classes], workers, overwrite, progress,
                               as_images=layout == "images")
        else:
            summary = _raw(Path(out), source, resolution, workers, overwrite, progress)
    seconds = time.perf_counter() - t0
    n_views = classes * objects_per_class * views
    summary.update(layout=layout, views=n_views, seconds=round(seconds, 2),
                   views_per_s=round(n_views / max(seconds, 1e-9), 1))
    return summary


def synthetic_manifest(path: Path) -> dict | None:
    """The manifest of the complete prepared synthetic dataset at `path`, or None if there is none."""
    from ctxssl_cli.data.prepared import PreparedDataset, is_prepared

    if not is_prepared(path):
        return None
    m = PreparedDataset(path).manifest
    return m if m.get("dataset") == "synthetic" else None


def stale_renderer(manifest: dict | None) -> int | None:
    """The renderer version recorded in a synthetic dataset's manifest (`synthetic_manifest`) if it is not this
    renderer's, else None (also None for no manifest)."""
    from ctxssl_cli.data.render import RENDER_VERSION

    if manifest is None:
        return None
    version = int((manifest.get("source") or {}).get("renderer_version", 1))
    return None if version == RENDER_VERSION else version


def check_renderer(path: Path, manifest: dict | None) -> None:
    """Refuse a synthetic dataset (its `synthetic_manifest`) made by another renderer version."""
    from ctxssl_cli.data.render import RENDER_VERSION

    version = stale_renderer(manifest)
    if version is None:
        return
    raise CtxsslError(f"{path} was rendered by renderer version {version}; this ctxssl renders version "
                      f"{RENDER_VERSION} (hues on an arc that does not wrap, see CHANGELOG)",
                      f"render it again: `ctxssl prepare synthetic --out {path} --overwrite` (to train on the "
                      "old one on purpose, name it: `ctxssl pretrain --data DIR`)")


def _object_ids(source: dict) -> tuple[list[str], np.ndarray]:
    from ctxssl_cli.data.raw_layout import synset_name

    ids = [f"{synset_name(c)}/{o:05d}" for c in range(source["classes"]) for o in range(source["objects_per_class"])]
    labels = np.repeat(np.arange(source["classes"], dtype=np.int64), source["objects_per_class"])
    return ids, labels


def _prepare(out: Path, source: dict, resolution: int, class_names, workers, overwrite, progress,
             as_images: bool = False) -> dict:
    from ctxssl_cli.data.prepared_writer import PreparedWriter, fill_chunks, require_train_and_val
    from ctxssl_cli.data.schema import AUGMENT2D
    from ctxssl_cli.data.splits import stratified_split

    if as_images:
        source = dict(source, layout="images")
    writer = PreparedWriter(out, dataset="synthetic-images" if as_images else "synthetic", resolution=resolution,
                            codec="raw",
                            settings={"source": source}, overwrite=overwrite)
    ids, labels = _object_ids(source)
    tr, va = stratified_split(ids, labels, val_fraction=0.2, seed=source["seed"])
    splits = {"train": ([ids[i] for i in tr], labels[tr]), "val": ([ids[i] for i in va], labels[va])}
    require_train_and_val(splits, "use --objects-per-class 2 or more")
    writer.plan(n_views=source["views"], classes=list(class_names), splits=splits,
                split_source=f"stratified-seed-{source['seed']}", source=source,
                action_schema=AUGMENT2D.to_manifest() if as_images else None)

    def task(split, i):
        key, label = splits[split][0][i], int(splits[split][1][i])
        return source["seed"], label, int(key.split("/")[1]), source["views"], resolution, as_images

    fill_chunks(writer, task, render_task, workers=workers, progress=progress,
                label=f"rendering synthetic{' images' if as_images else ''} ({resolution} px)")
    return writer.finalize()


def render_task(task):
    """Worker: render one object -> (payload (V, 3, H, W) uint8, latents (V, 7), hist (3, 256))."""
    from ctxssl_cli.data.prepared import encode_views
    from ctxssl_cli.data.render import render_object

    seed, class_idx, obj_idx, n_views, resolution, as_images = task
    images, latents = render_object(seed, class_idx, obj_idx, n_views, resolution)
    payload, hist = encode_views(images, "raw")
    return payload, latents[:, :0] if as_images else latents, hist


# -- the raw 3DIEBench layout -----------------------------------------------------------------------------------
def _raw(out: Path, source: dict, resolution: int, workers, overwrite, progress) -> dict:
    from ctxssl_cli.data.parallel import parallel_map, track
    from ctxssl_cli.data.prepared import human_size
    from ctxssl_cli.data.raw_layout import synset_name

    settings = dict(source, resolution=resolution)
    ours = {synset_name(c) for c in range(source["classes"])}
    target = _claim_raw(out, settings, ours, overwrite)  # `out`, or a build folder beside it (overwrite)
    ids, labels = _object_ids(source)
    todo = [(str(target), source["seed"], int(lab), key, source["views"], resolution)
            for key, lab in zip(ids, labels) if not (target / key).is_dir()]
    with track(f"rendering {resolution} px (raw layout)", total=len(ids) * source["views"],
               enabled=progress) as advance:
        advance((len(ids) - len(todo)) * source["views"])
        for n in parallel_map(raw_task, todo, workers):
            advance(n)
    _write_marker(target, dict(settings=settings, complete=True))
    if target != out:
        swap_in(target, out)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    n_cls = np.bincount(labels)
    return {"out": str(out), "size_bytes": size, "size": human_size(size),
            "counts": {"objects": len(ids), "per_class": int(n_cls[0])},
            "n_views": source["views"], "resolution": resolution}


def raw_task(task) -> int:
    from ctxssl_cli.data.raw_layout import write_raw_object
    from ctxssl_cli.data.render import render_object

    root, seed, class_idx, key, n_views, resolution = task
    synset, obj = key.split("/")
    images, latents = render_object(seed, class_idx, int(obj), n_views, resolution)
    write_raw_object(Path(root), synset, obj, images, latents)
    return n_views


def _claim_raw(out: Path, settings: dict, ours: set, overwrite: bool, beside: bool = True) -> Path:
    """Make `out` ready for a raw render and return the folder to render into: `out` itself (fresh or resumed),
    or with overwrite a build folder beside it that replaces `out` once complete."""
    if out.exists() and not out.is_dir():
        raise CtxsslError(f"{out} is a file, not a folder", "choose a folder path for --out")
    out.mkdir(parents=True, exist_ok=True)
    entries = sorted(out.iterdir())
    marker = out / RAW_MARKER
    if entries and not marker.exists():
        raise CtxsslError(f"{out} holds files that ctxssl did not write ({entries[0].name})",
                          "choose an empty or new folder for --out")
    if marker.exists():
        state = yaml.safe_load(marker.read_text()) or {}
        foreign = [e.name for e in entries if e.name not in ours | {RAW_MARKER} and not _RAW_TEMP.fullmatch(e.name)]
        if foreign:
            raise CtxsslError(f"{out} holds files that ctxssl did not write ({foreign[0]})",
                              "choose an empty or new folder for --out; ctxssl never deletes files it did not write")
        same = state.get("settings") == yaml.safe_load(yaml.safe_dump(settings))
        if state.get("complete") or not same:
            if not overwrite:
                what = "a rendered dataset" if state.get("complete") else "an interrupted render with other settings"
                raise CtxsslError(f"{out} already holds {what}",
                                  "pass --overwrite to replace it, or choose another --out")
            if beside:
                return _claim_raw(build_dir(out), settings, ours, overwrite=True, beside=False)
            for e in entries:
                shutil.rmtree(e) if e.is_dir() else e.unlink()
        else:
            return out  # resume: objects already written are kept
    _write_marker(out, dict(settings=settings, complete=False))
    return out


def _write_marker(out: Path, state: dict) -> None:
    atomic_write_text(out / RAW_MARKER, yaml.safe_dump(state, sort_keys=True))

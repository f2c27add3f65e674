"""Writing the prepared format (data/prepared.py describes it): `PreparedWriter` and `fill_chunks`.

The writer claims the output folder, fixes the objects (`plan`), writes chunks in any order (resumable: a chunk's
image file is written under a temporary name unique to the process and renamed, then its record lands in
.incomplete/) and writes the manifest last (`finalize`). With --overwrite the new dataset is built beside the old
one (data/outdir.py) and swapped in only when complete. Callers hold `outdir.output_lock(root)` around all of it.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from safetensors import safe_open
from safetensors.numpy import save

from ctxssl_cli import __version__
from ctxssl_cli.data import outdir
from ctxssl_cli.data.inputs import check_object_id
from ctxssl_cli.data.parallel import parallel_map, track
from ctxssl_cli.data.prepared import (CODECS, FORMAT, INCOMPLETE, JPEG_QUALITY, MANIFEST, SPLITS, VERSION,
                                      chunk_objects_for, human_size, image_name)
from ctxssl_cli.errors import CtxsslError
from ctxssl_cli.fileio import atomic_write_bytes, commit, discard, tmp_path_for

_SPLIT_FILE = re.compile(r"object_ids\.txt|meta\.safetensors|images_\d{5}\.(u8|jpgs)")
# temporary names (fileio.tmp_path_for: ".NAME.tmp-PID"; older versions wrote "NAME.tmp")
_SPLIT_TEMP = re.compile(r"\.(object_ids\.txt|meta\.safetensors|images_\d{5}\.(u8|jpgs))\.tmp-\d+"
                         r"|(object_ids\.txt|meta\.safetensors|images_\d{5}\.(u8|jpgs))\.tmp")
_ROOT_TEMP = re.compile(r"\.manifest\.yaml\.tmp-\d+|manifest\.yaml\.tmp")
_WORK_TEMP = re.compile(r"\..+\.tmp-\d+|.+\.tmp")
LATENT_DIM = 7  # a stored view's latents (3DIEBench-like datasets); augment2d datasets store none


def _canonical(obj) -> dict:
    return yaml.safe_load(yaml.safe_dump(obj, sort_keys=True))


def _digest_lines(lines) -> str:
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _read_yaml(path: Path):
    try:
        return yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError):
        return None  # unreadable: treated as "other settings"


@dataclass(frozen=True)
class Chunk:
    split: str
    index: int
    start: int  # first object (index into the split)
    stop: int


class PreparedWriter:
    """Writes one prepared dataset, in two phases.

    1. `PreparedWriter(root, settings=...)` claims the output folder for the user's settings: it refuses a
       folder holding a complete dataset (unless overwrite) or files that are not ours, and resumes an
       interrupted run whose settings were the same (a different one is refused unless overwrite). Replacing
       anything (overwrite) happens in a build folder beside `root` (`self.dir`), swapped in by `finalize`.
    2. `plan(...)` fixes the objects (known only after scanning the source), then chunks are written in any
       order (`pending()` lists what is left) and `finalize()` writes the metadata and, last, the manifest.
    Used as a context manager, a CtxsslError (a bad source, found while packing) abandons an overwrite's build
    (`abandon`); any other exit (an interrupt) leaves the build to be resumed.
    """

    def __init__(self, root, *, dataset: str, resolution: int, codec: str, settings: dict,
                 jpeg_quality: int = JPEG_QUALITY, overwrite: bool = False):
        if codec not in CODECS:
            raise CtxsslError(f"unknown codec {codec!r}", f"use one of: {', '.join(CODECS)}")
        self.root = Path(root)
        self.dataset, self.codec, self.resolution = dataset, codec, int(resolution)
        self.jpeg_quality = int(jpeg_quality)
        self.settings = _canonical(dict(settings, dataset=dataset, resolution=self.resolution, codec=codec,
                                        jpeg_quality=self.jpeg_quality if codec == "jpeg" else None,
                                        version=VERSION))
        self.splits: dict = {}
        self.latent_dim = LATENT_DIM  # set by plan()
        self._claim(overwrite)

    # -- the output folder: fresh, resumed, replaced beside, or refused -------------------------------------------
    @staticmethod
    def _ours(entry: Path) -> bool:
        if entry.name in (MANIFEST, INCOMPLETE) or _ROOT_TEMP.fullmatch(entry.name):
            return True
        if entry.is_dir() and entry.name in SPLITS:
            return all(_SPLIT_FILE.fullmatch(p.name) or _SPLIT_TEMP.fullmatch(p.name) for p in entry.iterdir())
        return False

    def _claim(self, overwrite: bool) -> None:
        root = self.root
        if root.exists() and not root.is_dir():
            raise CtxsslError(f"{root} is a file, not a folder", "choose a folder path for --out")
        root.mkdir(parents=True, exist_ok=True)
        self.dir = root
        state = self._settle(root, overwrite, beside=True)
        if state == "beside":
            self.dir = outdir.build_dir(root)
            if self.dir.exists() and not self.dir.is_dir():
                self.dir.unlink()  # our own hidden name
            self.dir.mkdir(exist_ok=True)
            state = self._settle(self.dir, True, beside=False)
        self.work = self.dir / INCOMPLETE
        if state == "fresh":
            self.work.mkdir()
            atomic_write_bytes(self.work / "settings.yaml", yaml.safe_dump(self.settings, sort_keys=True).encode())

    def _settle(self, folder: Path, overwrite: bool, beside: bool) -> str:
        """Make `folder` ready: "resume", "fresh" (emptied or empty), or "beside" (to be replaced by a build)."""
        entries = sorted(folder.iterdir())
        foreign = [e.name for e in entries if not self._ours(e)]
        if foreign:
            raise CtxsslError(
                f"{folder} holds files that are not part of a ctxssl dataset ({', '.join(foreign[:3])})",
                "choose an empty or new folder for --out; ctxssl never deletes files it did not write")
        settings_file = folder / INCOMPLETE / "settings.yaml"
        if (folder / MANIFEST).exists():
            if not overwrite:
                raise CtxsslError(f"{folder} already holds a prepared dataset",
                                  "pass --overwrite to replace it, or choose another --out")
            replace = True
        elif settings_file.exists():
            if _read_yaml(settings_file) == self.settings:
                _drop_temps(folder)
                return "resume"  # finished work is kept
            work = folder / INCOMPLETE
            replace = any(work.glob("*_*.safetensors")) or (work / "staging").exists()  # started
            if replace and not overwrite:
                raise CtxsslError(f"{folder} holds an interrupted prepare with different settings",
                                  "rerun with the same settings to resume it, or pass --overwrite to start over")
        elif entries:
            if not overwrite:
                raise CtxsslError(f"{folder} holds a partial dataset without resume information",
                                  "pass --overwrite to start over, or choose another --out")
            replace = True
        else:
            return "fresh"
        if replace and beside:
            return "beside"
        _remove(entries)
        return "fresh"

    def abandon(self) -> None:
        """Drop an overwrite's build folder after a failure (the old dataset at `root` is untouched)."""
        if self.dir != self.root:
            outdir.discard_build(self.dir)

    def __enter__(self) -> "PreparedWriter":
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        from ctxssl_cli.errors import CtxsslError

        if kind is not None and issubclass(kind, CtxsslError):
            self.abandon()  # an overwrite's build is dropped, the old dataset stays
        return False

    def plan(self, *, n_views: int, classes: list[str], splits: dict, split_source: str, source: dict,
             mean=None, std=None, action_schema: dict | None = None) -> None:
        """Fix the objects: `splits` maps split name -> (object_ids, labels). mean/std None: computed over
        the train split's pixels while writing. Work left by an interrupted run for other objects is dropped.
        Refuses fewer than 2 views per object (1 for augment2d) and object ids with a control character (callers
        that make a dataset for training also call `require_train_and_val`).

        `action_schema` (a schema's `to_manifest()`) is written to the manifest; None (3DIEBench-like stored
        views) writes nothing. A dataset that declares `augment2d` makes its views on the fly: one stored image
        per object is enough and there are no latents (each object's latents are (V, 0))."""
        on_the_fly = _augment2d(action_schema)
        _check_plan(int(n_views), splits, min_views=1 if on_the_fly else 2)
        self.n_views = int(n_views)
        self.latent_dim = 0 if on_the_fly else LATENT_DIM
        self.splits = {k: (list(ids), np.asarray(lab, np.int64)) for k, (ids, lab) in splits.items()}
        self.chunk_objects = chunk_objects_for(self.n_views, self.resolution)
        self.fixed_norm = None if mean is None else ([float(v) for v in mean], [float(v) for v in std])
        self.head = {
            "format": FORMAT, "version": VERSION, "dataset": self.dataset, "resolution": self.resolution,
            "codec": self.codec, "n_views": self.n_views, "classes": list(classes),
            "counts": {k: len(v[0]) for k, v in self.splits.items()}, "split": split_source,
            "chunk_objects": self.chunk_objects, "source": dict(source),
        }
        if action_schema is not None:
            self.head["action_schema"] = _canonical(action_schema)
        if self.codec == "jpeg":
            self.head["jpeg"] = {"quality": self.jpeg_quality, "subsampling": "4:2:0", "encoder": "Pillow"}
        plan = _canonical(dict(self.head, norm=self.fixed_norm, objects={
            k: {"ids_sha256": _digest_lines(ids), "labels_sha256": hashlib.sha256(lab.tobytes()).hexdigest()}
            for k, (ids, lab) in self.splits.items()}))
        plan_file = self.work / "plan.yaml"
        if plan_file.exists() and _read_yaml(plan_file) != plan:
            _remove(sorted(self.work.glob("*_*.safetensors")))
            _remove([self.dir / s for s in SPLITS if (self.dir / s).exists()])
        atomic_write_bytes(plan_file, yaml.safe_dump(plan, sort_keys=True).encode())

    # -- chunks -----------------------------------------------------------------------------------------------
    def chunks(self) -> list[Chunk]:
        out = []
        for split, (ids, _) in self.splits.items():
            for k, start in enumerate(range(0, len(ids), self.chunk_objects)):
                out.append(Chunk(split, k, start, min(start + self.chunk_objects, len(ids))))
        return out

    def _record(self, c: Chunk) -> Path:
        return self.work / f"{c.split}_{c.index:05d}.safetensors"

    def is_done(self, c: Chunk) -> bool:
        rec, img = self._record(c), self.dir / image_name(c.split, c.index, self.codec)
        if not rec.exists() or not img.exists():
            return False
        with safe_open(str(rec), "np") as f:
            return int(f.metadata()["bytes"]) == img.stat().st_size

    def pending(self) -> list[Chunk]:
        return [c for c in self.chunks() if not self.is_done(c)]

    def write_chunk(self, c: Chunk, objects: list) -> None:
        """`objects`: per object of the chunk, in order, (payload, latents (V, 7) or (V, 0), hist (3, 256))."""
        assert len(objects) == c.stop - c.start, "one result per object of the chunk"
        n, v = len(objects), self.n_views
        latents = np.stack([np.asarray(o[1], np.float32).reshape(v, self.latent_dim) for o in objects])
        hist = np.sum([o[2] for o in objects], axis=0).astype(np.int64)
        img_path = self.dir / image_name(c.split, c.index, self.codec)
        img_path.parent.mkdir(exist_ok=True)
        tmp = tmp_path_for(img_path)
        sha, size = hashlib.sha256(), 0
        tensors = {"latents": latents, "hist": hist}
        try:
            with open(tmp, "wb") as f:
                if self.codec == "raw":
                    shape = (v, 3, self.resolution, self.resolution)
                    for payload, *_ in objects:
                        assert payload.shape == shape and payload.dtype == np.uint8, payload.shape
                        data = payload.tobytes()
                        f.write(data), sha.update(data)
                        size += len(data)
                else:
                    lengths = np.array([[len(b) for b in o[0]] for o in objects], np.int64).reshape(n, v)
                    offsets = (np.cumsum(lengths.ravel()) - lengths.ravel()).reshape(n, v)
                    for payload, *_ in objects:
                        for b in payload:
                            f.write(b), sha.update(b)
                    size = int(lengths.sum())
                    tensors.update(jpeg_offsets=offsets, jpeg_lengths=lengths)
            commit(tmp, img_path)
        except BaseException:
            discard(tmp)
            raise
        atomic_write_bytes(self._record(c), save(tensors, metadata={"sha256": sha.hexdigest(), "bytes": str(size)}))

    # -- finalize -------------------------------------------------------------------------------------------
    def finalize(self) -> dict:
        """Assemble the per-split metadata, write the manifest last, drop the work folder; an overwrite's build
        folder is then swapped in for the old dataset."""
        todo = self.pending()
        if todo:
            raise CtxsslError(f"{len(todo)} chunks are not written yet", "rerun the same prepare command")
        files, chunk_lists, hist = [], {}, np.zeros((3, 256), np.int64)
        for split, (ids, labels) in self.splits.items():
            recs, chunk_lists[split] = [], []
            for c in (c for c in self.chunks() if c.split == split):
                with safe_open(str(self._record(c)), "np") as f:
                    meta = f.metadata()
                    recs.append({k: f.get_tensor(k) for k in f.keys()})
                name = image_name(split, c.index, self.codec)
                files.append({"path": name, "bytes": int(meta["bytes"]), "sha256": meta["sha256"]})
                chunk_lists[split].append({"file": name, "start": c.start, "count": c.stop - c.start})
                if split == "train":
                    hist += recs[-1]["hist"]
            split_dir = self.dir / split
            split_dir.mkdir(exist_ok=True)
            empty_lat = np.zeros((0, self.n_views, self.latent_dim), np.float32)
            tensors = {"labels": labels, "latents": np.concatenate([r["latents"] for r in recs]) if recs else empty_lat}
            if self.codec == "jpeg":
                for key in ("jpeg_offsets", "jpeg_lengths"):
                    empty = np.zeros((0, self.n_views), np.int64)
                    tensors[key] = np.concatenate([r[key] for r in recs]) if recs else empty
            atomic_write_bytes(split_dir / "meta.safetensors", save(tensors))
            atomic_write_bytes(split_dir / "object_ids.txt", "".join(i + "\n" for i in ids).encode())
            for name in ("meta.safetensors", "object_ids.txt"):
                p = split_dir / name
                files.append({"path": f"{split}/{name}", "bytes": p.stat().st_size,
                              "sha256": hashlib.sha256(p.read_bytes()).hexdigest()})
        if self.fixed_norm is not None:
            (mean, std), how = self.fixed_norm, "given"
        else:
            (mean, std), how = _hist_mean_std(hist), "computed over the train split"
        manifest = dict(self.head, normalisation={"mean": mean, "std": std, "source": how},
                        chunks=chunk_lists, files=files, created_by=f"ctxssl {__version__}")
        atomic_write_bytes(self.dir / MANIFEST, yaml.safe_dump(manifest, sort_keys=False).encode())
        shutil.rmtree(self.work)
        size = sum(f["bytes"] for f in files) + (self.dir / MANIFEST).stat().st_size
        if self.dir != self.root:
            outdir.swap_in(self.dir, self.root)
            self.dir, self.work = self.root, self.root / INCOMPLETE
        return {"out": str(self.root), "size_bytes": size, "size": human_size(size),
                "counts": dict(self.head["counts"]),
                "codec": self.codec, "resolution": self.resolution, "n_views": self.n_views}


def _augment2d(action_schema: dict | None) -> bool:
    """True when a plan's action schema is augment2d (validated: an unknown or altered schema is refused)."""
    if action_schema is None:
        return False
    from ctxssl_cli.data.schema import AUGMENT2D, schema_from_manifest

    return schema_from_manifest({"action_schema": action_schema}).name == AUGMENT2D.name


def _check_plan(n_views: int, splits: dict, min_views: int = 2) -> None:
    if n_views < min_views:
        if min_views == 1:
            raise CtxsslError(f"the objects have {n_views} images each", "give every object one image")
        raise CtxsslError(f"the objects have {n_views} view each; training pairs need at least 2 views of an object",
                          "use a source with at least 2 views (image_0.jpg, image_1.jpg, ...) per object")
    for name, (ids, _) in splits.items():
        for key in ids:
            check_object_id(key, f"{name} split", "object ids are stored one per line: rename that object's "
                            "folder (or fix the split list) so the name has no newline or control character")


def require_train_and_val(splits: dict, fix: str) -> None:
    """Refuse a dataset with an empty train or val split (pretraining needs one, evaluation the other)."""
    counts = {name: len(splits[name][0]) if name in splits else 0 for name in SPLITS}
    empty = next((name for name in SPLITS if counts[name] == 0), None)
    if empty is not None:
        raise CtxsslError(f"the {empty} split would be empty (train {counts['train']}, val {counts['val']} "
                          "objects): nothing could be trained or evaluated on it", fix)


def _remove(entries) -> None:
    for e in entries:  # callers pass only entries that are ours
        shutil.rmtree(e) if e.is_dir() else e.unlink()


def _drop_temps(folder: Path) -> None:
    """Remove temporary files left by an interrupted writer (the caller holds the output lock: none is live)."""
    for p in folder.iterdir():
        if p.is_file() and _ROOT_TEMP.fullmatch(p.name):
            p.unlink()
    for name in SPLITS:
        if (folder / name).is_dir():
            for p in (folder / name).iterdir():
                if _SPLIT_TEMP.fullmatch(p.name):
                    p.unlink()
    work = folder / INCOMPLETE
    for p in [*work.glob("*"), *work.glob("staging/*/*")]:
        if p.is_file() and _WORK_TEMP.fullmatch(p.name):
            p.unlink()


def _hist_mean_std(hist: np.ndarray):
    """Per-channel mean and std in [0, 1] units from (3, 256) value histograms (exact)."""
    vals = np.arange(256, dtype=np.float64) / 255.0
    count = np.maximum(hist.sum(axis=1), 1)
    mean = (hist * vals).sum(axis=1) / count
    var = (hist * vals**2).sum(axis=1) / count - mean**2
    std = np.sqrt(np.maximum(var, 1e-12))
    return [round(float(v), 6) for v in mean], [round(float(v), 6) for v in std]


def fill_chunks(writer: PreparedWriter, tasks, work_fn, *, workers=None, progress=True, label="packing") -> None:
    """Run `work_fn(task)` for every object of every pending chunk, in parallel, and write the chunks in order.

    `tasks(split, i)` builds the picklable task of object i of a split; `work_fn` runs in a worker process and
    returns (payload, latents, hist). The main process only writes: workers decode/render/encode.
    """
    pending = writer.pending()
    flat = [(c, i) for c in pending for i in range(c.start, c.stop)]
    n_views = writer.n_views
    with track(label, total=len(flat) * n_views, unit="views", enabled=progress) as advance:
        results: list = []
        for (c, i), res in zip(flat, parallel_map(work_fn, [tasks(c.split, i) for c, i in flat], workers)):
            results.append(res)
            advance(n_views)
            if i == c.stop - 1:
                writer.write_chunk(c, results)
                results = []

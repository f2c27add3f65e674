"""The prepared dataset format (version 1): a chunked, checksummed, resumable writer and a fast reader.

Layout of a prepared dataset DIR (SPEC §3.3):

    DIR/manifest.yaml              written LAST, atomically: its presence means "complete"
    DIR/<split>/object_ids.txt     one "SYNSET/OBJ_ID" per line, in split order
    DIR/<split>/meta.safetensors   labels (N,) int64, latents (N, V, 7) float32,
                                   jpeg codec only: jpeg_offsets, jpeg_lengths (N, V) int64 (within the chunk file)
    DIR/<split>/images_00000.u8    raw codec: uint8 (n, V, 3, H, W), C-order, memory-mapped (CHW: no transpose)
    DIR/<split>/images_00000.jpgs  jpeg codec: the n*V JPEGs of the chunk, concatenated
    DIR/.incomplete/               work in progress: plan.yaml + one safetensors per finished chunk; removed last

A chunk is a run of consecutive objects of one split. Each chunk's image file is written to a temporary
name and renamed, then its record (latents, JPEG index, pixel histogram, sha256) lands in .incomplete/;
a rerun with the same plan skips every chunk whose record exists. Nothing is ever one file per image.
torch is imported lazily so that packing workers (spawned processes) stay light.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from safetensors import safe_open
from safetensors.numpy import load_file, save

from ctxssl_cli import __version__
from ctxssl_cli.data.parallel import parallel_map, track
from ctxssl_cli.errors import CtxsslError

FORMAT = "ctxssl-prepared"
VERSION = 1
CODECS = ("raw", "jpeg")
MANIFEST = "manifest.yaml"
INCOMPLETE = ".incomplete"
JPEG_QUALITY = 90  # 128-px renders: ~2-5 KB/view (full 3DIEBench well under 20 GB), visually lossless
JPEG_SUBSAMPLING = 2  # 4:2:0 chroma; hue information is global (floor, light), so nothing is lost for the task
CHUNK_BYTES = 256 << 20  # raw bytes per chunk (sets the objects per chunk for both codecs): resume granularity
PAPER_MEAN = (0.5016, 0.5037, 0.5060)  # 3DIEBench at 128 px (SPEC §3.2)
PAPER_STD = (0.1030, 0.0999, 0.0969)
_SPLIT_FILE = re.compile(r"(object_ids\.txt|meta\.safetensors|images_\d{5}\.(u8|jpgs))(\.tmp)?$")


def is_prepared(root) -> bool:
    """True when `root` holds a complete prepared dataset (a manifest of our format)."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        return False
    try:
        m = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return False
    return isinstance(m, dict) and m.get("format") == FORMAT


def chunk_objects_for(n_views: int, resolution: int) -> int:
    return max(1, CHUNK_BYTES // (n_views * 3 * resolution * resolution))


def image_name(split: str, index: int, codec: str) -> str:
    return f"{split}/images_{index:05d}.{'u8' if codec == 'raw' else 'jpgs'}"


def encode_views(images_hwc: np.ndarray, codec: str, quality: int = JPEG_QUALITY):
    """Worker-side: (V, H, W, 3) uint8 -> the chunk payload of one object and its pixel histogram (3, 256).

    raw -> (V, 3, H, W) uint8 array; jpeg -> list of V JPEG byte strings (Pillow, libjpeg).
    """
    from PIL import Image

    hist = np.stack([np.bincount(images_hwc[..., c].ravel(), minlength=256) for c in range(3)])
    if codec == "raw":
        return np.ascontiguousarray(images_hwc.transpose(0, 3, 1, 2)), hist  # (V, 3, H, W)
    out = []
    for im in images_hwc:
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, "JPEG", quality=quality, subsampling=JPEG_SUBSAMPLING)
        out.append(buf.getvalue())
    return out, hist


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _canonical(obj) -> dict:
    return yaml.safe_load(yaml.safe_dump(obj, sort_keys=True))


def _digest_lines(lines) -> str:
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


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
       interrupted run whose settings were the same (a different one is refused unless overwrite).
    2. `plan(...)` fixes the objects (known only after scanning the source), then chunks are written in any
       order (`pending()` lists what is left) and `finalize()` writes the metadata and, last, the manifest.
    """

    def __init__(self, root, *, dataset: str, resolution: int, codec: str, settings: dict,
                 jpeg_quality: int = JPEG_QUALITY, overwrite: bool = False):
        if codec not in CODECS:
            raise CtxsslError(f"unknown codec {codec!r}", f"use one of: {', '.join(CODECS)}")
        self.root, self.work = Path(root), Path(root) / INCOMPLETE
        self.dataset, self.codec, self.resolution = dataset, codec, int(resolution)
        self.jpeg_quality = int(jpeg_quality)
        self.settings = _canonical(dict(settings, dataset=dataset, resolution=self.resolution, codec=codec,
                                        jpeg_quality=self.jpeg_quality if codec == "jpeg" else None,
                                        version=VERSION))
        self.splits: dict = {}
        self._claim(overwrite)

    # -- the output folder: fresh, resumed, or refused ------------------------------------------------------
    @staticmethod
    def _ours(entry: Path) -> bool:
        if entry.name in (MANIFEST, MANIFEST + ".tmp", INCOMPLETE):
            return True
        if entry.is_dir() and entry.name in ("train", "val"):
            return all(_SPLIT_FILE.fullmatch(p.name) for p in entry.iterdir())
        return False

    def _claim(self, overwrite: bool) -> None:
        root = self.root
        if root.exists() and not root.is_dir():
            raise CtxsslError(f"{root} is a file, not a folder", "choose a folder path for --out")
        root.mkdir(parents=True, exist_ok=True)
        entries = sorted(root.iterdir())
        foreign = [e.name for e in entries if not self._ours(e)]
        if foreign:
            raise CtxsslError(
                f"{root} holds files that are not part of a ctxssl dataset ({', '.join(foreign[:3])})",
                "choose an empty or new folder for --out; ctxssl never deletes files it did not write")
        settings_file = self.work / "settings.yaml"
        if (root / MANIFEST).exists():
            if not overwrite:
                raise CtxsslError(f"{root} already holds a prepared dataset",
                                  "pass --overwrite to replace it, or choose another --out")
            _remove(entries)
        elif settings_file.exists():
            if yaml.safe_load(settings_file.read_text()) == self.settings:
                return  # resume: finished work is kept
            started = any(self.work.glob("*_*.safetensors")) or (self.work / "staging").exists()
            if started and not overwrite:
                raise CtxsslError(f"{root} holds an interrupted prepare with different settings",
                                  "rerun with the same settings to resume it, or pass --overwrite to start over")
            _remove(entries)
        elif entries:
            if not overwrite:
                raise CtxsslError(f"{root} holds a partial dataset without resume information",
                                  "pass --overwrite to start over, or choose another --out")
            _remove(entries)
        self.work.mkdir()
        _atomic_write(settings_file, yaml.safe_dump(self.settings, sort_keys=True).encode())

    def plan(self, *, n_views: int, classes: list[str], splits: dict, split_source: str, source: dict,
             mean=None, std=None) -> None:
        """Fix the objects: `splits` maps split name -> (object_ids, labels). mean/std None: computed over
        the train split's pixels while writing. Work left by an interrupted run for other objects is dropped."""
        self.n_views = int(n_views)
        self.splits = {k: (list(ids), np.asarray(lab, np.int64)) for k, (ids, lab) in splits.items()}
        self.chunk_objects = chunk_objects_for(self.n_views, self.resolution)
        self.fixed_norm = None if mean is None else ([float(v) for v in mean], [float(v) for v in std])
        self.head = {
            "format": FORMAT, "version": VERSION, "dataset": self.dataset, "resolution": self.resolution,
            "codec": self.codec, "n_views": self.n_views, "classes": list(classes),
            "counts": {k: len(v[0]) for k, v in self.splits.items()}, "split": split_source,
            "chunk_objects": self.chunk_objects, "source": dict(source),
        }
        if self.codec == "jpeg":
            self.head["jpeg"] = {"quality": self.jpeg_quality, "subsampling": "4:2:0", "encoder": "Pillow"}
        plan = _canonical(dict(self.head, norm=self.fixed_norm, objects={
            k: {"ids_sha256": _digest_lines(ids), "labels_sha256": hashlib.sha256(lab.tobytes()).hexdigest()}
            for k, (ids, lab) in self.splits.items()}))
        plan_file = self.work / "plan.yaml"
        if plan_file.exists() and yaml.safe_load(plan_file.read_text()) != plan:
            _remove(sorted(self.work.glob("*_*.safetensors")))
            _remove([self.root / s for s in ("train", "val") if (self.root / s).exists()])
        _atomic_write(plan_file, yaml.safe_dump(plan, sort_keys=True).encode())

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
        rec, img = self._record(c), self.root / image_name(c.split, c.index, self.codec)
        if not rec.exists() or not img.exists():
            return False
        with safe_open(str(rec), "np") as f:
            return int(f.metadata()["bytes"]) == img.stat().st_size

    def pending(self) -> list[Chunk]:
        return [c for c in self.chunks() if not self.is_done(c)]

    def write_chunk(self, c: Chunk, objects: list) -> None:
        """`objects`: per object of the chunk, in order, (payload, latents (V, 7), hist (3, 256))."""
        assert len(objects) == c.stop - c.start, "one result per object of the chunk"
        n, v = len(objects), self.n_views
        latents = np.stack([np.asarray(o[1], np.float32).reshape(v, 7) for o in objects])
        hist = np.sum([o[2] for o in objects], axis=0).astype(np.int64)
        img_path = self.root / image_name(c.split, c.index, self.codec)
        img_path.parent.mkdir(exist_ok=True)
        tmp = img_path.with_name(img_path.name + ".tmp")
        sha, size = hashlib.sha256(), 0
        tensors = {"latents": latents, "hist": hist}
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
        os.replace(tmp, img_path)
        _atomic_write(self._record(c), save(tensors, metadata={"sha256": sha.hexdigest(), "bytes": str(size)}))

    # -- finalize -------------------------------------------------------------------------------------------
    def finalize(self) -> dict:
        """Assemble the per-split metadata, write the manifest last, drop the work folder."""
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
            split_dir = self.root / split
            split_dir.mkdir(exist_ok=True)
            empty_lat = np.zeros((0, self.n_views, 7), np.float32)
            tensors = {"labels": labels, "latents": np.concatenate([r["latents"] for r in recs]) if recs else empty_lat}
            if self.codec == "jpeg":
                for key in ("jpeg_offsets", "jpeg_lengths"):
                    empty = np.zeros((0, self.n_views), np.int64)
                    tensors[key] = np.concatenate([r[key] for r in recs]) if recs else empty
            _atomic_write(split_dir / "meta.safetensors", save(tensors))
            _atomic_write(split_dir / "object_ids.txt", "".join(i + "\n" for i in ids).encode())
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
        _atomic_write(self.root / MANIFEST, yaml.safe_dump(manifest, sort_keys=False).encode())
        shutil.rmtree(self.work)
        size = sum(f["bytes"] for f in files) + (self.root / MANIFEST).stat().st_size
        return {"out": str(self.root), "size_bytes": size, "size": human_size(size),
                "counts": dict(self.head["counts"]),
                "codec": self.codec, "resolution": self.resolution, "n_views": self.n_views}


def human_size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return ""


def _remove(entries) -> None:
    for e in entries:  # callers pass only entries that are ours
        shutil.rmtree(e) if e.is_dir() else e.unlink()


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


class PreparedDataset:
    """A complete prepared dataset. Opening validates the manifest and that every file is present and whole
    (by size); `verify()` also checks every sha256 (slow: reads everything)."""

    def __init__(self, root):
        self.root = Path(root)
        mpath = self.root / MANIFEST
        if not mpath.is_file():
            if (self.root / INCOMPLETE).exists():
                raise CtxsslError(f"{self.root} is an unfinished prepare (interrupted)",
                                  "rerun the same `ctxssl prepare` command to finish it")
            if not self.root.exists():
                raise CtxsslError(f"no prepared dataset at {self.root}",
                                  "run `ctxssl prepare synthetic` or `ctxssl prepare 3diebench --source PATH` first")
            raise CtxsslError(f"{self.root} is not a prepared dataset (no {MANIFEST})",
                              "point to a folder written by `ctxssl prepare`")
        raw = mpath.read_bytes()
        self.manifest_sha256 = hashlib.sha256(raw).hexdigest()
        try:
            m = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise CtxsslError(f"{mpath} is not valid YAML ({e.__class__.__name__})",
                              "re-run prepare with --overwrite") from None
        if not isinstance(m, dict) or m.get("format") != FORMAT:
            raise CtxsslError(f"{mpath} is not a ctxssl prepared-dataset manifest", "re-run prepare with --overwrite")
        if m.get("version") != VERSION:
            raise CtxsslError(f"{self.root} is prepared-format version {m.get('version')}; this ctxssl reads "
                              f"version {VERSION}", "re-run prepare with --overwrite, or use a matching ctxssl")
        missing = [k for k in ("resolution", "codec", "n_views", "classes", "counts", "normalisation", "chunks",
                               "files") if k not in m]
        if missing:
            raise CtxsslError(f"{mpath} lacks {', '.join(missing)}", "re-run prepare with --overwrite")
        for f in m["files"]:
            p = self.root / f["path"]
            if not p.is_file() or p.stat().st_size != f["bytes"]:
                raise CtxsslError(f"{p} is missing or truncated", "re-run prepare with --overwrite")
        self.manifest = m
        self.resolution, self.n_views, self.codec = int(m["resolution"]), int(m["n_views"]), m["codec"]
        self.classes = list(m["classes"])
        self.mean = tuple(float(v) for v in m["normalisation"]["mean"])
        self.std = tuple(float(v) for v in m["normalisation"]["std"])

    @property
    def splits(self) -> list[str]:
        return list(self.manifest["chunks"])

    def split(self, name: str) -> "SplitData":
        if name not in self.manifest["chunks"]:
            raise CtxsslError(f"{self.root} has no split {name!r}", f"use one of: {', '.join(self.splits)}")
        return SplitData(self, name)

    def verify(self) -> None:
        for f in self.manifest["files"]:
            h = hashlib.sha256()
            with open(self.root / f["path"], "rb") as fh:
                while block := fh.read(1 << 22):
                    h.update(block)
            if h.hexdigest() != f["sha256"]:
                raise CtxsslError(f"{self.root / f['path']} does not match its checksum (corrupt)",
                                  "re-run prepare with --overwrite")


class SplitData:
    """One split: small arrays in memory, images read on demand from memory-mapped chunk files."""

    def __init__(self, ds: PreparedDataset, name: str):
        self.root, self.name = ds.root, name
        self.codec, self.n_views, self.resolution = ds.codec, ds.n_views, ds.resolution
        meta = load_file(str(ds.root / name / "meta.safetensors"))
        self.labels = meta["labels"].astype(np.int64)
        self.latents = meta["latents"].astype(np.float32)
        self._offsets, self._lengths = meta.get("jpeg_offsets"), meta.get("jpeg_lengths")
        self.object_ids = (ds.root / name / "object_ids.txt").read_text().splitlines()
        self.n_objects = len(self.object_ids)
        chunks = ds.manifest["chunks"][name]
        self._files = [ds.root / c["file"] for c in chunks]
        self._starts = np.array([c["start"] for c in chunks], np.int64)
        self._counts = np.array([c["count"] for c in chunks], np.int64)
        self._chunk_of = np.repeat(np.arange(len(chunks)), self._counts)
        if not (len(self.labels) == len(self.latents) == self.n_objects == len(self._chunk_of)):
            raise CtxsslError(f"{ds.root}/{name} is inconsistent (object counts differ)",
                              "re-run prepare with --overwrite")
        self._maps: dict = {}

    def __getstate__(self):  # DataLoader workers / spawn: reopen from disk instead of pickling memmaps
        return {"root": str(self.root), "name": self.name}

    def __setstate__(self, state):
        self.__dict__.update(PreparedDataset(state["root"]).split(state["name"]).__dict__)

    def __len__(self) -> int:
        return self.n_objects

    def _map(self, c: int) -> np.ndarray:
        mm = self._maps.get(c)
        if mm is None:
            if self.codec == "raw":
                shape = (int(self._counts[c]), self.n_views, 3, self.resolution, self.resolution)
                mm = np.memmap(self._files[c], dtype=np.uint8, mode="r", shape=shape)
            else:
                mm = np.memmap(self._files[c], dtype=np.uint8, mode="r")
            self._maps[c] = mm
        return mm

    def images(self, obj, view):
        """uint8 tensor (B, 3, H, W) of views `view[b]` of objects `obj[b]` (B = len(obj))."""
        import torch

        obj = np.asarray(obj, np.int64).reshape(-1)
        view = np.asarray(view, np.int64).reshape(-1)
        if obj.shape != view.shape:
            raise ValueError(f"obj and view differ in length: {obj.shape} vs {view.shape}")
        if obj.size and (obj.min() < 0 or obj.max() >= self.n_objects or view.min() < 0 or view.max() >= self.n_views):
            raise IndexError(f"object/view index out of range ({self.n_objects} objects, {self.n_views} views)")
        chunk = self._chunk_of[obj]
        local = obj - self._starts[chunk]
        r = self.resolution
        if self.codec == "raw":
            if len(obj) and (chunk == chunk[0]).all():  # one gather straight into a fresh (B, 3, H, W) array
                return torch.from_numpy(self._map(int(chunk[0]))[local, view])
            out = np.empty((len(obj), 3, r, r), np.uint8)  # (B, 3, H, W); no temporaries (page faults cost)
            for i, (c, l, v) in enumerate(zip(chunk.tolist(), local.tolist(), view.tolist())):
                out[i] = self._map(c)[l, v]
            return torch.from_numpy(out)
        if len(obj) == 0:
            return torch.empty((0, 3, r, r), dtype=torch.uint8)
        offs, lens = self._offsets[obj, view], self._lengths[obj, view]
        data = [torch.from_numpy(np.array(self._map(int(c))[o:o + n])) for c, o, n in zip(chunk, offs, lens)]
        return torch.stack(_decode_jpegs(data))  # (B, 3, H, W)


def _decode_jpegs(data: list) -> list:
    """libjpeg(-turbo) decoding through torchvision (deprecated there since 0.29 in favour of TorchCodec, but
    still the fastest dependency-free path); Pillow if a future torchvision drops it."""
    import warnings

    import torch

    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:
        from PIL import Image

        return [torch.from_numpy(np.asarray(Image.open(io.BytesIO(d.numpy().tobytes())).convert("RGB"))
                                 .transpose(2, 0, 1).copy()) for d in data]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return decode_jpeg(data, mode=ImageReadMode.RGB)

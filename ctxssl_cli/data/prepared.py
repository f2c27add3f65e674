"""The prepared dataset format (version 1) and its reader; the writer is in prepared_writer.py.

Layout of a prepared dataset DIR (SPEC §3.3):

    DIR/manifest.yaml              written LAST, atomically: its presence means "complete"
    DIR/<split>/object_ids.txt     one "SYNSET/OBJ_ID" per line, in split order
    DIR/<split>/meta.safetensors   labels (N,) int64, latents (N, V, 7) float32 ((N, 1, 0) in an augment2d dataset:
                                   one image per object, views made on the fly, nothing stored per view),
                                   jpeg codec only: jpeg_offsets, jpeg_lengths (N, V) int64 (within the chunk file)
    DIR/<split>/images_00000.u8    raw codec: uint8 (n, V, 3, H, W), C-order, memory-mapped (CHW: no transpose)
    DIR/<split>/images_00000.jpgs  jpeg codec: the n*V JPEGs of the chunk, concatenated
    DIR/.incomplete/               work in progress: plan.yaml + one safetensors per finished chunk; removed last

The manifest of a 2D dataset (CIFAR-10, an image folder) declares `action_schema: augment2d` (data/schema.py);
one without `action_schema` holds 3DIEBench-like stored views.

A chunk is a run of consecutive objects of one split. Each chunk's image file is written to a temporary name
unique to the process and renamed, then its record (latents, JPEG index, pixel histogram, sha256) lands in
.incomplete/; a rerun with the same plan skips every chunk whose record exists. Nothing is ever one file per
image. One prepare at a time writes a folder (a lock beside it, data/outdir.py); --overwrite builds the new
dataset beside the old one and swaps it in when complete.
torch is imported lazily so that packing workers (spawned processes) stay light.
"""

from __future__ import annotations

import functools
import hashlib
import io
from pathlib import Path

import numpy as np
import yaml
from safetensors.numpy import load_file

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
SPLITS = ("train", "val")
_WRITER_NAMES = ("PreparedWriter", "fill_chunks", "Chunk")  # defined in prepared_writer.py, importable from here


def __getattr__(name: str):
    """`from ctxssl_cli.data.prepared import PreparedWriter` keeps working: the writer lives in prepared_writer.py
    (imported lazily, so that reading a dataset never imports the writer and there is no import cycle)."""
    if name in _WRITER_NAMES:
        from ctxssl_cli.data import prepared_writer

        return getattr(prepared_writer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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


def human_size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return ""


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
        offs, lens = self._offsets[obj, view].tolist(), self._lengths[obj, view].tolist()
        maps = {c: self._map(c).view(np.ndarray) for c in set(chunk.tolist())}  # plain arrays: cheap slices
        data = [torch.from_numpy(maps[c][o:o + n].copy()) for c, o, n in zip(chunk.tolist(), offs, lens)]
        # the decoders return (3, H, W) views of (H, W, 3) pixels: stacking those as (H, W, 3) and transposing the
        # batch once is 2x faster than stacking the strided views (measured: 9 against 16 ms for 512 views), and
        # numpy's transposing copy of uint8 is faster than torch's (32 against 57 us per 128-px view)
        hwc = torch.stack([im.permute(1, 2, 0) for im in _decode_jpegs(data)])  # (B, H, W, 3)
        return torch.from_numpy(np.ascontiguousarray(hwc.numpy().transpose(0, 3, 1, 2)))  # (B, 3, H, W)


def _decode_jpegs(data: list) -> list:
    """Decode JPEG byte tensors to (3, H, W) uint8 RGB tensors with libjpeg-turbo through TorchCodec, the
    decoder PyTorch maintains (torchvision's decode_jpeg is deprecated since 0.29 in its favour; the two give the
    same pixels at the same speed, measured on 128-px views). Where TorchCodec cannot load (a torch older than
    it supports), torchvision's decoder, then Pillow."""
    decode = _jpeg_decoder()
    return decode(data)


@functools.lru_cache(maxsize=1)
def _jpeg_decoder():
    try:
        from torchcodec.decoders import decode_jpeg

        return lambda data: decode_jpeg(data, mode="RGB")
    except (ImportError, OSError, RuntimeError):  # not installed, or its native library does not load here
        pass
    try:
        import warnings

        from torchvision.io import ImageReadMode, decode_jpeg as tv_decode

        def decode(data):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                return tv_decode(data, mode=ImageReadMode.RGB)
        return decode
    except ImportError:
        import torch
        from PIL import Image

        return lambda data: [torch.from_numpy(np.asarray(Image.open(io.BytesIO(d.numpy().tobytes())).convert("RGB"))
                                              .transpose(2, 0, 1).copy()) for d in data]
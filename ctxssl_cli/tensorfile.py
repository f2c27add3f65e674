"""Safetensors files written and read one tensor at a time, for files larger than memory.

An embeddings file of 3DIEBench (SPEC §4) holds an (objects, 50, F) tensor per context mode and length: about
4.3 GB each for the train split at F = 512 in float32, tens of GB together. `safetensors.torch.save_file` and
`load_file` take and return every tensor at once; these classes hold one (or a piece of one):

- `StreamWriter` writes tensors as they are made into a temp file (a header slot reserved at the front, the
  tensors' bytes appended in arrival order; a tensor may come in pieces, written as they are made, or as a copy
  of one already written, read back in chunks), then fills in the header (the offsets, the metadata and the
  content_sha256 of checkpoint.content_hash, computed by reading the tensors back one at a time in sorted-name
  order) and moves the file into place atomically. The result is an ordinary safetensors file: the JSON header
  is padded with spaces to the reserved size, as the format allows (its own writer pads to 8 bytes).
- `LazyTensors` is a read-only mapping over a safetensors file that reads a tensor from disk when it is asked
  for (plain reads into a fresh tensor, no memory map kept), so a caller that drops each tensor after use never
  holds more than one. The header is validated by the safetensors library before any byte is read.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import torch

from ctxssl_cli.fileio import commit, discard, tmp_path_for

# safetensors dtype names <-> torch dtypes (the ones ctxssl writes; others are refused on read)
DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}
NAMES = {v: k for k, v in DTYPES.items()}
_ENTRY_BYTES = 192  # header room per tensor: {"name":{"dtype":"F32","shape":[a,b,c],"data_offsets":[x,y]}}


def _bytes_of(t: torch.Tensor) -> memoryview:
    """The raw bytes of a contiguous CPU tensor, without a copy."""
    return memoryview(t.reshape(-1).view(torch.uint8).numpy()) if t.numel() else memoryview(b"")


class StreamWriter:
    """Write a safetensors file tensor by tensor; `with StreamWriter(path, meta, max_tensors) as w: w.add(...)`
    (a whole tensor), `w.add_pieces(...)` (one made in pieces), `w.add_copy(...)` (a copy of one written).

    `meta` is the file's metadata (strings); content_sha256 is added on close. `max_tensors` bounds the
    header's size (it is reserved before the first tensor). Any exception inside the `with` leaves no file:
    neither the temp file nor a half-written target."""

    def __init__(self, path: Path, meta: dict[str, str], max_tensors: int):
        self.path, self.meta = Path(path), dict(meta)
        self.tmp = tmp_path_for(self.path)
        meta_json = json.dumps({"__metadata__": {**self.meta, "content_sha256": "0" * 64}})
        self.reserved = -(-(len(meta_json.encode()) + _ENTRY_BYTES * (max_tensors + 1) + 64) // 8) * 8
        self.entries: dict[str, dict] = {}
        self.offset = 0
        self.f = None

    def __enter__(self) -> "StreamWriter":
        self.f = open(self.tmp, "wb")
        self.f.write(b"\0" * (8 + self.reserved))
        return self

    def add(self, name: str, tensor: torch.Tensor) -> None:
        t = tensor.detach()
        self.add_pieces(name, tuple(t.shape), t.dtype, [t])

    def add_pieces(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, pieces: Iterable[torch.Tensor]) -> None:
        """Write tensor `name` of `shape` and `dtype` from consecutive pieces of its row-major bytes (e.g. row
        blocks of its first axes), each written as it comes: the whole tensor is never in memory."""
        if name in self.entries:
            raise ValueError(f"tensor {name!r} written twice")
        if dtype not in NAMES:
            raise ValueError(f"tensor {name!r}: dtype {dtype} cannot be stored")
        size = math.prod(shape) * dtype.itemsize
        written = 0
        try:
            for piece in pieces:
                if piece.dtype != dtype:
                    raise ValueError(f"tensor {name!r}: a piece of dtype {piece.dtype}, expected {dtype}")
                data = _bytes_of(piece.detach().cpu().contiguous())
                written += len(data)
                if written > size:
                    raise ValueError(f"tensor {name!r}: its pieces exceed the {size} bytes of shape {list(shape)}")
                self.f.write(data)
            if written != size:
                raise ValueError(f"tensor {name!r}: its pieces hold {written} of the {size} bytes of shape {list(shape)}")
        except BaseException:  # nothing of a failed tensor stays: the file ends at the last complete one
            self.f.seek(8 + self.reserved + self.offset)
            self.f.truncate()
            raise
        self.entries[name] = {"dtype": NAMES[dtype], "shape": list(shape),
                              "data_offsets": [self.offset, self.offset + size]}
        self.offset += size

    def add_copy(self, name: str, source: str, chunk_bytes: int = 64 << 20) -> None:
        """Write tensor `name` as a copy of the already written `source`, read back from the file in chunks."""
        if chunk_bytes <= 0 or chunk_bytes % 8:
            raise ValueError("chunk_bytes must be a positive multiple of 8")
        e = self.entries[source]
        begin, end = e["data_offsets"]
        self.f.flush()

        def pieces():
            with open(self.tmp, "rb") as f:
                f.seek(8 + self.reserved + begin)
                for s in range(begin, end, chunk_bytes):
                    buf = torch.empty(min(chunk_bytes, end - s), dtype=torch.uint8)
                    if f.readinto(_bytes_of(buf)) != len(buf):
                        raise OSError(f"{self.tmp} is truncated (tensor {source!r})")
                    yield buf.view(DTYPES[e["dtype"]])

        self.add_pieces(name, tuple(e["shape"]), DTYPES[e["dtype"]], pieces())

    def _finish(self) -> None:
        from ctxssl_cli.checkpoint import HASH_KEY, content_hash_items

        self.f.flush()
        reader = LazyTensors(self.tmp, self.entries, 8 + self.reserved)
        meta = {**self.meta, HASH_KEY: content_hash_items(((n, reader[n]) for n in sorted(self.entries)), self.meta)}
        header = json.dumps({"__metadata__": meta, **self.entries}, separators=(",", ":")).encode()
        if len(header) > self.reserved:
            raise ValueError(f"safetensors header of {len(header)} bytes does not fit the {self.reserved} reserved")
        self.f.seek(0)
        self.f.write(struct.pack("<Q", self.reserved) + header + b" " * (self.reserved - len(header)))
        self.f.close()
        commit(self.tmp, self.path)

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self._finish()
                return
            except BaseException:
                self.f.close()
                discard(self.tmp)
                raise
        self.f.close()
        discard(self.tmp)


class TensorDict(dict):
    """{name: tensor} in memory with StreamWriter's add / add_pieces / add_copy, for code written against a
    StreamWriter (embed.embed_split_into) when the tensors are wanted in memory."""

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if name in self:
            raise ValueError(f"tensor {name!r} written twice")
        self[name] = tensor

    def add_pieces(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, pieces: Iterable[torch.Tensor]) -> None:
        out = torch.empty(shape, dtype=dtype)
        flat, pos = out.view(-1), 0
        for piece in pieces:
            if piece.dtype != dtype:
                raise ValueError(f"tensor {name!r}: a piece of dtype {piece.dtype}, expected {dtype}")
            piece = piece.reshape(-1)
            if pos + len(piece) > len(flat):
                raise ValueError(f"tensor {name!r}: its pieces exceed shape {list(shape)}")
            flat[pos:pos + len(piece)] = piece
            pos += len(piece)
        if pos != len(flat):
            raise ValueError(f"tensor {name!r}: its pieces hold {pos} of the {len(flat)} values of shape {list(shape)}")
        self.add(name, out)

    def add_copy(self, name: str, source: str) -> None:
        self.add(name, self[source])


class LazyTensors(Mapping):
    """{name: tensor} of a safetensors file, each read from disk on access (see the module docstring)."""

    def __init__(self, path: Path, entries: dict[str, dict], data_start: int):
        self.path, self.entries, self.data_start = Path(path), entries, data_start

    @classmethod
    def open(cls, path: Path) -> tuple["LazyTensors", dict[str, str]]:
        """The tensors and metadata of a safetensors file; SafetensorError / OSError / ValueError if it is not
        one (the header is checked by the safetensors library itself before it is trusted here)."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:  # validates offsets, dtypes and shapes
            meta = dict(f.metadata() or {})
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        header.pop("__metadata__", None)
        for name, e in header.items():
            if e["dtype"] not in DTYPES:
                raise ValueError(f"tensor {name!r} has dtype {e['dtype']}, which ctxssl does not read")
        return cls(path, header, 8 + n), meta

    def shape(self, name: str) -> tuple[int, ...]:
        """The shape of tensor `name`, without reading it."""
        return tuple(self.entries[name]["shape"])

    def dtype(self, name: str) -> torch.dtype:
        return DTYPES[self.entries[name]["dtype"]]

    def __getitem__(self, name: str) -> torch.Tensor:
        e = self.entries[name]  # KeyError for an unknown name, as a dict
        begin, end = e["data_offsets"]
        t = torch.empty(e["shape"], dtype=DTYPES[e["dtype"]])
        if end > begin:
            with open(self.path, "rb") as f:
                f.seek(self.data_start + begin)
                if f.readinto(_bytes_of(t)) != end - begin:
                    raise OSError(f"{self.path} is truncated (tensor {name!r})")
        return t

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)


def shape_of(tensors: Mapping, name: str) -> tuple[int, ...]:
    """The shape of tensors[name], without reading it where the mapping can tell (one with a shape() method)."""
    return tensors.shape(name) if callable(getattr(tensors, "shape", None)) else tuple(tensors[name].shape)


def nbytes_of(tensors: Mapping, name: str) -> int:
    """The bytes of tensors[name], without reading it where the mapping can tell (shape() and dtype() methods)."""
    if callable(getattr(tensors, "shape", None)):
        return math.prod(tensors.shape(name)) * tensors.dtype(name).itemsize
    t = tensors[name]
    return t.numel() * t.element_size()

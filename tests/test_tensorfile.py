"""Safetensors files written and read one tensor at a time (ctxssl_cli/tensorfile.py)."""

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ctxssl_cli.checkpoint import content_hash, read_verified_lazy
from ctxssl_cli.errors import CtxsslError
from ctxssl_cli.tensorfile import LazyTensors, StreamWriter


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {"z.b.2": torch.randn(3, 4, 5, generator=g), "a": torch.arange(7, dtype=torch.int64),
            "h": torch.randn(3, 4, 5, generator=g).to(torch.bfloat16), "empty": torch.zeros(0, 3),
            "flag": torch.tensor([True, False])}


def _write(path, tensors, meta, max_tensors=None):
    with StreamWriter(path, meta, max_tensors or len(tensors)) as w:
        for name, t in tensors.items():
            w.add(name, t)


def test_a_streamed_file_is_an_ordinary_safetensors_file(tmp_path):
    tensors, meta = _tensors(), {"format": "ctxssl-test", "note": "x" * 3000}
    path = tmp_path / "t.safetensors"
    _write(path, tensors, meta)
    back = load_file(str(path))  # the library's own reader
    assert back.keys() == tensors.keys() and all(torch.equal(back[k], tensors[k]) for k in tensors)
    with safe_open(str(path), framework="pt") as f:
        stored = f.metadata()
    assert stored["note"] == meta["note"]
    assert stored["content_sha256"] == content_hash(tensors, meta)  # the hash of the in-memory writer
    assert int.from_bytes(path.read_bytes()[:8], "little") % 8 == 0  # header padded to 8 bytes, as the format's
    lazy, lazy_meta = LazyTensors.open(path)
    assert lazy_meta == stored and set(lazy) == set(tensors) and len(lazy) == len(tensors)
    for k, t in tensors.items():
        assert lazy.shape(k) == tuple(t.shape) and lazy.dtype(k) == t.dtype and torch.equal(lazy[k], t)
    with pytest.raises(KeyError):
        lazy["missing"]


def test_verified_lazy_read_refuses_a_tampered_or_truncated_file(tmp_path):
    tensors, meta = _tensors(), {"format": "ctxssl-test"}
    path = tmp_path / "t.safetensors"
    _write(path, tensors, meta)
    lazy, _ = read_verified_lazy(path, "ctxssl-test", "test file", "make it again")
    assert torch.equal(lazy["z.b.2"], tensors["z.b.2"])
    data = bytearray(path.read_bytes())
    data[-30] ^= 0xFF  # one byte of the last tensor's data
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(CtxsslError, match="failed its integrity check"):
        read_verified_lazy(bad, "ctxssl-test", "test file", "make it again")
    bad.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CtxsslError, match="not a readable safetensors test file"):
        read_verified_lazy(bad, "ctxssl-test", "test file", "make it again")
    with pytest.raises(CtxsslError, match="not a ctxssl test file"):
        read_verified_lazy(path, "ctxssl-other", "test file", "make it again")


def test_an_interrupted_stream_leaves_nothing(tmp_path):
    path = tmp_path / "t.safetensors"
    with pytest.raises(KeyboardInterrupt):
        with StreamWriter(path, {"format": "x"}, 3) as w:
            w.add("a", torch.ones(4))
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="written twice"):
        with StreamWriter(path, {"format": "x"}, 3) as w:
            w.add("a", torch.ones(4))
            w.add("a", torch.ones(4))
    assert list(tmp_path.iterdir()) == []


def test_a_header_larger_than_reserved_is_refused_not_corrupted(tmp_path):
    path = tmp_path / "t.safetensors"
    with pytest.raises(ValueError, match="does not fit"):
        with StreamWriter(path, {"format": "x"}, 1) as w:  # room for 2 entries, 40 given
            for i in range(40):
                w.add(f"tensor_with_a_long_name_{i:04d}", torch.ones(2, 3, 4))
    assert list(tmp_path.iterdir()) == []


def test_pieces_and_copies_write_the_same_file_as_whole_tensors(tmp_path):
    """A tensor handed over in row blocks (add_pieces), or as a copy of one already written (add_copy, read back
    in chunks smaller than the tensor), gives byte for byte the file that whole tensors give."""
    from ctxssl_cli.tensorfile import TensorDict

    tensors, meta = _tensors(), {"format": "ctxssl-test"}
    copies = {"copy.z": "z.b.2", "copy.h": "h", "copy.empty": "empty"}  # h: written third, at a non-zero offset
    whole = tmp_path / "whole.safetensors"
    _write(whole, {**tensors, **{c: tensors[src] for c, src in copies.items()}}, meta)
    pieced = tmp_path / "pieced.safetensors"

    def fill(out, **copy_args):
        for name, t in tensors.items():
            if name == "z.b.2":
                out.add_pieces(name, tuple(t.shape), t.dtype, iter(t.reshape(-1, 5).split(4)))  # 4 rows at a time
            else:
                out.add(name, t)
        for c, src in copies.items():
            out.add_copy(c, src, **copy_args)

    with StreamWriter(pieced, meta, len(tensors) + len(copies)) as w:
        fill(w, chunk_bytes=24)  # read back 24 bytes at a time: h's 120 bytes end on a short chunk
    mem = TensorDict()
    fill(mem)
    assert pieced.read_bytes() == whole.read_bytes()
    assert set(mem) == set(tensors) | set(copies) and all(torch.equal(mem[k], t) for k, t in tensors.items())
    assert all(torch.equal(mem[c], tensors[src]) for c, src in copies.items())


@pytest.mark.parametrize("pieces, why", [([torch.zeros(7)], "hold 28 of the 40 bytes"),
                                         ([torch.zeros(10), torch.zeros(1)], "exceed the 40 bytes"),
                                         ([torch.zeros(10, dtype=torch.float64)], "dtype torch.float64")])
def test_pieces_that_do_not_fill_the_shape_leave_no_file(tmp_path, pieces, why):
    path = tmp_path / "t.safetensors"
    with pytest.raises(ValueError, match=why):
        with StreamWriter(path, {"format": "ctxssl-test"}, 2) as w:
            w.add_pieces("x", (2, 5), torch.float32, iter(pieces))
    assert list(tmp_path.iterdir()) == []


def test_a_failed_tensor_leaves_nothing_behind_in_the_file(tmp_path):
    """A tensor whose pieces fail part-way is cut off the temp file: a caller that goes on writes the same file
    as one that never tried it. An in-memory TensorDict refuses a piece of another dtype, as the writer does."""
    from ctxssl_cli.tensorfile import TensorDict

    meta, a, b = {"format": "ctxssl-test"}, torch.arange(6.0), torch.ones(2, 3)
    clean = tmp_path / "clean.safetensors"
    _write(clean, {"a": a, "b": b}, meta, max_tensors=3)
    tried = tmp_path / "tried.safetensors"
    with StreamWriter(tried, meta, 3) as w:
        w.add("a", a)
        with pytest.raises(ValueError, match="exceed"):
            w.add_pieces("bad", (2, 2), torch.float32, iter([torch.zeros(3), torch.zeros(3)]))
        w.add("b", b)
    assert tried.read_bytes() == clean.read_bytes()
    with pytest.raises(ValueError, match="dtype torch.float64"):
        TensorDict().add_pieces("x", (2,), torch.float32, iter([torch.zeros(2, dtype=torch.float64)]))

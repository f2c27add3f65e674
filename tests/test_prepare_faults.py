"""`prepare` under faults: two runs into one --out (a lock), --overwrite that keeps the old dataset when the new
source is bad, datasets nothing can train on, FIFOs and broken metadata files (one line each, never a hang or a
traceback), and plain progress lines when stderr is not a terminal."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ctxssl_cli.data import prepared
from ctxssl_cli.data.outdir import build_dir, lock_path, output_lock
from ctxssl_cli.data.pack3diebench import pack_3diebench
from ctxssl_cli.data.prepared import PreparedDataset, is_prepared
from ctxssl_cli.data.synthetic import RAW_MARKER, prepare_synthetic
from ctxssl_cli.errors import CtxsslError
from tests.test_pack3diebench import SYNSETS, make_raw

CTXSSL = Path(sys.executable).with_name("ctxssl")
TINY = dict(classes=2, objects_per_class=3, views=3, resolution=16, seed=0, progress=False, workers=0)
TINY_CLI = ["--classes", "2", "--objects-per-class", "3", "--views", "3", "--resolution", "16", "--workers", "0"]


@pytest.fixture(autouse=True)
def no_hang():
    """A FIFO read would block forever: fail the test after 60 s instead."""
    def boom(*_):
        raise TimeoutError("prepare hung")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def _cli(*args, env=None):
    return subprocess.run([str(CTXSSL), *map(str, args)], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, **(env or {})))


def _one_line_error(r, *words):
    assert r.returncode != 0, r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.stderr
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def _pack(src, out, **kw):
    kw.setdefault("resolution", 16)
    kw.setdefault("codec", "raw")
    return pack_3diebench(src, out, workers=0, progress=False, **kw)


@pytest.fixture
def raw(tmp_path):
    return make_raw(tmp_path / "raw", n_obj=(2, 2, 2), views=2)


# -- 1. one prepare at a time ---------------------------------------------------------------------------------
def test_second_prepare_into_the_same_out_is_refused_naming_the_holder(tmp_path):
    out = tmp_path / "d"
    with output_lock(out):  # this process plays the first prepare
        assert lock_path(out).read_text().strip() == str(os.getpid())
        r = _cli("prepare", "synthetic", "--out", out, *TINY_CLI)
        _one_line_error(r, "being written by another ctxssl prepare", f"pid {os.getpid()}", f"kill {os.getpid()}")
        with pytest.raises(CtxsslError, match="being written by another"):
            prepare_synthetic(out, layout="3diebench", **TINY)
    assert not out.exists() or not any(out.iterdir())
    r = _cli("prepare", "synthetic", "--out", out, *TINY_CLI)  # released: now it runs
    assert r.returncode == 0, r.stderr
    assert is_prepared(out) and not lock_path(out).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no lock file, no temp folder left
    assert sorted(p.name for p in out.iterdir()) == ["manifest.yaml", "train", "val"]


def test_stale_temp_files_of_a_dead_writer_are_ours_and_cleared_on_resume(tmp_path, monkeypatch, interrupt_chunks):
    monkeypatch.setattr(prepared, "CHUNK_BYTES", 3 * 3 * 16 * 16)  # 1 object per chunk
    interrupt_chunks(2)
    with pytest.raises(KeyboardInterrupt):
        prepare_synthetic(tmp_path / "d", **TINY)
    stale = tmp_path / "d" / "train" / ".images_00007.u8.tmp-999999"  # another process's temp name
    stale.write_bytes(b"half")
    (tmp_path / "d" / ".manifest.yaml.tmp-999999").write_bytes(b"half")
    interrupt_chunks.disarm()
    prepare_synthetic(tmp_path / "d", **TINY)
    assert not stale.exists() and not (tmp_path / "d" / ".manifest.yaml.tmp-999999").exists()
    PreparedDataset(tmp_path / "d").verify()


# -- 2. --overwrite builds beside and swaps --------------------------------------------------------------------
def test_overwrite_with_a_bad_source_keeps_the_old_dataset(raw, tmp_path):
    out = tmp_path / "out"
    _pack(raw, out)
    before = PreparedDataset(out).manifest_sha256
    (raw / SYNSETS[1] / "obj001" / "image_1.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(CtxsslError, match="corrupt"):
        _pack(raw, out, overwrite=True)
    ds = PreparedDataset(out)
    ds.verify()
    assert ds.manifest_sha256 == before and ds.split("train").images([0], [0]).shape == (1, 3, 16, 16)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "raw"]  # the failed build is gone
    (tmp_path / "bad.txt").write_text("02691156/ghost\n")
    with pytest.raises(CtxsslError, match="ghost"):
        _pack(raw, out, overwrite=True, train_list=tmp_path / "bad.txt", val_list=tmp_path / "bad.txt")
    assert PreparedDataset(out).manifest_sha256 == before


def test_interrupted_overwrite_keeps_the_old_dataset_then_completes(tmp_path, interrupt_chunks):
    out = tmp_path / "d"
    prepare_synthetic(out, **TINY)
    before = PreparedDataset(out).manifest_sha256
    interrupt_chunks(0)
    with pytest.raises(KeyboardInterrupt):
        prepare_synthetic(out, overwrite=True, **dict(TINY, seed=1))
    assert PreparedDataset(out).manifest_sha256 == before  # still the old one, readable
    assert build_dir(out).is_dir()  # the half-built new one waits beside it
    interrupt_chunks.disarm()
    prepare_synthetic(out, overwrite=True, **dict(TINY, seed=1))
    assert PreparedDataset(out).manifest["split"] == "stratified-seed-1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_a_swap_cut_short_is_repaired_by_the_next_run(tmp_path):
    out = tmp_path / "d"
    prepare_synthetic(out, **TINY)
    before = PreparedDataset(out).manifest_sha256
    os.rename(out, tmp_path / ".d.old-12345")  # crashed after moving the old one away, before moving the new in
    with output_lock(out):
        pass
    assert PreparedDataset(out).manifest_sha256 == before and sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_raw_layout_overwrite_swaps_in_a_complete_render(tmp_path):
    out = tmp_path / "raw"
    prepare_synthetic(out, layout="3diebench", **TINY)
    prepare_synthetic(out, layout="3diebench", overwrite=True, **dict(TINY, seed=3))
    import yaml

    assert yaml.safe_load((out / RAW_MARKER).read_text())["settings"]["seed"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


# -- 3. datasets nothing can train on ----------------------------------------------------------------------------
def test_object_id_with_a_newline_is_refused(raw, tmp_path):
    os.rename(raw / SYNSETS[0] / "obj001", raw / SYNSETS[0] / "obj\n001")
    with pytest.raises(CtxsslError, match=r"contains a newline"):
        _pack(raw, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_split_list_entry_with_a_control_character_is_refused(raw, tmp_path):
    np.save(tmp_path / "tr.npy", np.array([f"{SYNSETS[0]}/obj000", f"{SYNSETS[0]}/obj\n001"]))
    (tmp_path / "tr.txt").write_text(f"{SYNSETS[0]}/obj000\n")
    (tmp_path / "va.txt").write_text(f"{SYNSETS[1]}/obj\x0b000\n")
    with pytest.raises(CtxsslError, match="contains a newline"):
        _pack(raw, tmp_path / "out", train_list=tmp_path / "tr.npy", val_list=tmp_path / "tr.txt")
    with pytest.raises(CtxsslError, match="contains U\\+000B"):
        _pack(raw, tmp_path / "out", train_list=tmp_path / "tr.txt", val_list=tmp_path / "va.txt")
    assert not is_prepared(tmp_path / "out")


def test_empty_val_split_is_refused(tmp_path):
    src = make_raw(tmp_path / "one", n_obj=(1, 1, 1), views=2)  # one object per class: stratified val is empty
    with pytest.raises(CtxsslError, match="val split would be empty"):
        _pack(src, tmp_path / "out")
    assert not is_prepared(tmp_path / "out")
    raw = make_raw(tmp_path / "raw", n_obj=(2, 2, 2), views=2)
    (tmp_path / "empty.txt").write_text("# nothing\n")
    (tmp_path / "va.txt").write_text(f"{SYNSETS[0]}/obj000\n")
    with pytest.raises(CtxsslError, match="train split would be empty"):
        _pack(raw, tmp_path / "out2", train_list=tmp_path / "empty.txt", val_list=tmp_path / "va.txt")
    assert not is_prepared(tmp_path / "out2")


def test_one_view_per_object_is_refused(tmp_path):
    src = make_raw(tmp_path / "raw", n_obj=(2, 2, 2), views=1)
    with pytest.raises(CtxsslError, match="at least 2 views"):
        _pack(src, tmp_path / "out")
    assert not is_prepared(tmp_path / "out")


def test_synthetic_needs_two_objects_per_class(tmp_path):
    r = _cli("prepare", "synthetic", "--out", tmp_path / "d", "--classes", "2", "--objects-per-class", "1",
             "--views", "3", "--resolution", "16")
    _one_line_error(r, "--objects-per-class must be >= 2")
    with pytest.raises(CtxsslError, match="objects_per_class=1 must be >= 2"):
        prepare_synthetic(tmp_path / "d", **dict(TINY, objects_per_class=1))
    assert not (tmp_path / "d").exists()


# -- 4. FIFOs and broken metadata files ------------------------------------------------------------------------
def test_fifo_as_source_split_list_labels_or_view_file_is_refused(raw, tmp_path):
    fifo = tmp_path / "pipe.npy"
    os.mkfifo(fifo)
    r = _cli("prepare", "3diebench", "--source", fifo, "--out", tmp_path / "o", "--resolution", "16")
    _one_line_error(r, "FIFO", "not a folder or a .tar.gz file")
    (tmp_path / "va.txt").write_text(f"{SYNSETS[0]}/obj000\n")
    with pytest.raises(CtxsslError, match="split file .*pipe.npy is a FIFO"):
        _pack(raw, tmp_path / "o", train_list=fifo, val_list=tmp_path / "va.txt")
    keys = sorted(f"{p.parent.name}/{p.name}" for p in raw.glob("*/*"))
    (tmp_path / "tr.txt").write_text("\n".join(keys[1:]))
    (tmp_path / "l.txt").write_text("0\n")
    with pytest.raises(CtxsslError, match="pipe.npy is a FIFO"):
        _pack(raw, tmp_path / "o", train_list=tmp_path / "tr.txt", val_list=tmp_path / "va.txt",
              train_labels=fifo, val_labels=tmp_path / "l.txt")
    view = raw / SYNSETS[2] / "obj001" / "latent_1.npy"
    view.unlink()
    os.mkfifo(view)
    with pytest.raises(CtxsslError, match=rf"object {SYNSETS[2]}/obj001: latent_1.npy is a FIFO"):
        _pack(raw, tmp_path / "o")
    assert not is_prepared(tmp_path / "o")


def _good_latent():
    return np.array([0.1, 0.2, 0.3, 0.5, 0.2, 1.0, 0.5], np.float32)


@pytest.mark.parametrize("kind,words", [
    ("garbage", "latent_1.npy is not a .npy file"),
    ("text", r"latent_1.npy is not a .npy file \(it holds text\)"),
    ("truncated", "latent_1.npy is truncated or corrupt"),
    ("header", "latent_1.npy has a corrupt .npy header"),
    ("npz", "latent_1.npy is not a .npy file"),
    ("object", "latent_1.npy needs pickle"),
])
def test_corrupt_latent_names_object_and_view(raw, tmp_path, kind, words):
    import io

    path = raw / SYNSETS[1] / "obj000" / "latent_1.npy"
    buf = io.BytesIO()
    np.save(buf, _good_latent())
    good = buf.getvalue()
    if kind == "garbage":
        data = bytes(range(256))
    elif kind == "text":
        data = b"0.1 0.2 0.3 0.5 0.2 1.0 0.5\n"
    elif kind == "truncated":
        data = good[:-5]
    elif kind == "header":
        data = good[:10] + b"{'descr': <f4 broken" + good[30:]
    elif kind == "npz":
        buf = io.BytesIO()
        np.savez(buf, a=_good_latent())
        data = buf.getvalue()
    else:
        buf = io.BytesIO()
        np.save(buf, np.array([1, None], dtype=object), allow_pickle=True)
        data = buf.getvalue()
    path.write_bytes(data)
    with pytest.raises(CtxsslError, match=rf"object {SYNSETS[1]}/obj000 view 1: {words}"):
        _pack(raw, tmp_path / "out")


def _lists(raw, tmp_path):
    keys = sorted(f"{p.parent.name}/{p.name}" for p in raw.glob("*/*"))
    (tmp_path / "tr.txt").write_text("\n".join(keys[2:]))
    (tmp_path / "va.txt").write_text("\n".join(keys[:2]))
    np.save(tmp_path / "vl.npy", np.zeros(2, np.int64))
    return keys


@pytest.mark.parametrize("bad,words", [
    (np.array([["a/b", "c/d"]]), r"holds an array of shape \(1, 2\), not a 1-d list"),
    (np.arange(3), "holds int64 values, not object paths"),
    ("text", r"is not a .npy file \(it holds text\)"),
])
def test_bad_split_list_npy(raw, tmp_path, bad, words):
    _lists(raw, tmp_path)
    if isinstance(bad, str):
        (tmp_path / "tr.npy").write_text((tmp_path / "tr.txt").read_text())  # a text list named .npy
    else:
        np.save(tmp_path / "tr.npy", bad)
    with pytest.raises(CtxsslError, match=rf"split file .*tr.npy {words}"):
        _pack(raw, tmp_path / "out", train_list=tmp_path / "tr.npy", val_list=tmp_path / "va.txt")


@pytest.mark.parametrize("bad,words", [
    (np.zeros(3, np.int64), "has 3 labels but its split list has 4 objects"),
    (np.array(["a", "b", "c", "d"]), "holds <U1 values, not integer labels"),
    (np.array([0.5, 1, 2, 0]), "does not hold integer labels"),
    (np.array([True, False, True, False]), "holds bool values"),
    (np.array([0, 0, 10**12, 0]), "holds label 1000000000000"),
    ("text", r"is not a .npy file \(it holds text\)"),
])
def test_bad_labels_npy(raw, tmp_path, bad, words):
    _lists(raw, tmp_path)
    if isinstance(bad, str):
        (tmp_path / "tl.npy").write_text("0\n0\n1\n1\n")
    else:
        np.save(tmp_path / "tl.npy", bad)
    with pytest.raises(CtxsslError, match=rf"labels file .*tl.npy {words}"):
        _pack(raw, tmp_path / "out", train_list=tmp_path / "tr.txt", val_list=tmp_path / "va.txt",
              train_labels=tmp_path / "tl.npy", val_labels=tmp_path / "vl.npy")


def test_bad_metadata_is_one_line_on_the_cli(raw, tmp_path):
    _lists(raw, tmp_path)
    (tmp_path / "tl.npy").write_bytes(b"\x93NUMPY\x01\x00garbage")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00binary")
    r = _cli("prepare", "3diebench", "--source", raw, "--out", tmp_path / "o", "--resolution", "16",
             "--train-list", tmp_path / "tr.txt", "--val-list", tmp_path / "va.txt",
             "--train-labels", tmp_path / "tl.npy", "--val-labels", tmp_path / "vl.npy", "--workers", "0")
    _one_line_error(r, "tl.npy")
    r = _cli("prepare", "3diebench", "--source", raw, "--out", tmp_path / "o", "--resolution", "16",
             "--train-list", tmp_path / "bin.txt", "--val-list", tmp_path / "va.txt", "--workers", "0")
    _one_line_error(r, "bin.txt is neither a .npy file nor UTF-8 text")
    assert not is_prepared(tmp_path / "o")


# -- 6. progress without a terminal ----------------------------------------------------------------------------
def test_prepare_prints_plain_progress_lines_when_stderr_is_not_a_terminal(tmp_path, monkeypatch, capfd):
    monkeypatch.delenv("CTXSSL_PROGRESS", raising=False)
    monkeypatch.setenv("CTXSSL_PROGRESS_INTERVAL", "0")
    prepare_synthetic(tmp_path / "d", **dict(TINY, progress=True))
    err = capfd.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("rendering synthetic (16 px): ")]
    assert len(lines) == 6, err  # one per object at interval 0
    assert lines[-1].startswith("rendering synthetic (16 px): 18/18 (100%)") and "elapsed" in lines[-1]
    assert "\x1b[" not in err  # no terminal control codes

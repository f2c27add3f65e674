"""Faults outside one command's own inputs: a data-loader worker that cannot decode a chunk, model.sync_bn and
bf16 on one CPU process, and writes that the disk refuses (full, over quota, read-only, permission denied)
in prepare, pretrain, evaluate and embed: one `Error: <what> — <fix>` line naming the path, no temp file left."""

import errno
import gc
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from torch.utils.data import DataLoader, Dataset

from ctxssl_cli import checkpoint as ckpt_mod
from ctxssl_cli.checkpoint import CHECKPOINT_NAME, load_checkpoint
from ctxssl_cli.cli.app import main
from ctxssl_cli.data.pack3diebench import pack_3diebench
from ctxssl_cli.data.prepared import PreparedDataset, is_prepared
from ctxssl_cli.data.synthetic import prepare_synthetic
from ctxssl_cli.errors import CtxsslError
from ctxssl_cli.runs import load_run
from ctxssl_cli.tensorfile import StreamWriter
from ctxssl_cli.spec import load_spec
from ctxssl_cli.train.dist import DistInfo
from ctxssl_cli.train.loop import _worker_error, pretrain
from tests.test_pack3diebench import make_raw

CTXSSL = Path(sys.executable).with_name("ctxssl")
TINY = ["train.batch_size=16", "model.block_size=8", "model.n_embd=32", "model.n_layer=1", "model.n_head=2",
        "model.encoder=convnet", "model.aux_hidden=32", "data.workers=0", "train.max_steps=2", "train.log_every=1"]
TINY_CLI = [a for kv in TINY for a in ("--set", kv)]
REAL_WRITE_BYTES = Path.write_bytes


def ctxssl(monkeypatch, capfd, *args):
    """Run the CLI in this process: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["ctxssl", *map(str, args)])
    with pytest.raises(SystemExit) as e:
        main()
    cap = capfd.readouterr()
    return e.value.code or 0, cap.out, cap.err


def one_error_line(code, err, *words):
    """The one `Error: <what> — <fix>` line (progress lines may come before it); every word must be in it."""
    assert code not in (0, None), err
    assert "Traceback" not in err and "internal error" not in err, err
    errors = [ln for ln in err.splitlines() if ln.startswith("Error: ")]
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0] and " — " in errors[0], err
    for w in words:
        assert w in errors[0], (w, errors[0])
    return errors[0]


def no_temp_files(root: Path) -> list[Path]:
    return sorted(p for p in Path(root).rglob("*") if ".tmp" in p.name)


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    out = tmp_path_factory.mktemp("faults") / "s"
    prepare_synthetic(out, classes=3, objects_per_class=6, views=5, resolution=16, seed=0, workers=0,
                      progress=False)
    return out


@pytest.fixture(scope="module")
def fp32_run(syn):
    """Two fp32 steps on `syn`: the baseline for bf16, and a run to evaluate and embed."""
    run_dir = syn.parent / "fp32"
    pretrain(load_spec("rotcolor", TINY + ["train.precision=fp32", f"data.path={syn}"]), PreparedDataset(syn),
             run_dir, DistInfo())
    return run_dir


def fail_writes_to(monkeypatch, prefix: str, code: int) -> list[Path]:
    """Path.write_bytes (what fileio.atomic_write_bytes writes with) fails on temp files named `prefix`* after
    writing half the bytes, as a kernel error does: an OSError that names no file. Returns the files hit."""
    hit = []

    def write_bytes(self, data):
        if self.name.startswith(prefix):
            hit.append(self)
            REAL_WRITE_BYTES(self, data[: len(data) // 2])
            raise OSError(code, os.strerror(code))
        return REAL_WRITE_BYTES(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    return hit


DISK_ERRORS = {  # errno -> words of its one line: what went wrong, then the fix
    errno.ENOSPC: ("no space left on device writing", "free space on the disk that holds"),
    errno.EDQUOT: ("disk quota exceeded writing", "free space within your quota"),
    errno.EROFS: ("read-only file system: cannot write", "choose a writable --out"),
    errno.EACCES: ("permission denied:", "give this user access to", "choose a writable --out"),
}


# -- 1. a data-loader worker that cannot read its batch ----------------------------------------------------------
def test_corrupt_jpeg_chunk_fails_in_a_worker_as_one_line(tmp_path):
    raw = make_raw(tmp_path / "raw", n_obj=(3, 3, 3), views=3, res=16)
    ds = tmp_path / "ds"
    pack_3diebench(raw, ds, resolution=16, codec="jpeg", workers=0, progress=False)
    chunk = ds / "train" / "images_00000.jpgs"
    size = chunk.stat().st_size
    chunk.write_bytes(bytes(size))  # every JPEG of the chunk zeroed (no SOI marker); the size is unchanged
    PreparedDataset(ds)  # passes the size checks that every open does...
    with pytest.raises(CtxsslError, match="does not match its checksum"):
        PreparedDataset(ds).verify()  # ...only the (slow) sha256 check would see it
    r = subprocess.run([str(CTXSSL), "pretrain", "--data", ds, "--out", tmp_path / "run", "--device", "cpu",
                        *TINY_CLI, "--set", "data.workers=2"], capture_output=True, text=True, timeout=120)
    line = one_error_line(r.returncode, r.stderr, "reading a training batch failed in a data-loader worker: "
                          "RuntimeError:", "Not a JPEG file", "--set data.workers=0")
    assert ".cpp:" not in line  # the C++ source location of the decoder's message is dropped
    assert not (tmp_path / "run" / CHECKPOINT_NAME).exists()


class _Failing(Dataset):
    """Item i raises excs[i], in the worker process."""

    def __init__(self, excs):
        self.excs = excs

    def __len__(self):
        return len(self.excs)

    def __getitem__(self, i):
        raise self.excs[i]


def _from_workers(*excs) -> list[CtxsslError]:
    """What _worker_error makes of each exception, raised in a DataLoader worker and re-raised here."""
    it, found = iter(DataLoader(_Failing(excs), batch_size=None, num_workers=1)), []
    for _ in excs:
        try:
            next(it)
        except Exception as e:
            found.append(_worker_error(e))
    del it
    gc.collect()  # stop the worker now, not when a later collection finds the iterator (a 5 s join then)
    assert len(found) == len(excs), "a worker did not fail"
    return found


def test_worker_error_keeps_a_ctxssl_errors_own_message_and_fix():
    # PyTorch cannot rebuild a CtxsslError in this process (it comes back as a TypeError about `message=`)
    own, key, multi = _from_workers(
        CtxsslError("train/images_00003.jpgs holds no JPEG", "re-run prepare with --overwrite"),
        KeyError("view 7"), ValueError("bad\nshape"))
    assert type(own) is CtxsslError
    assert own.message == ("reading a training batch failed in a data-loader worker: train/images_00003.jpgs "
                           "holds no JPEG — re-run prepare with --overwrite")
    assert key.what == "reading a training batch failed in a data-loader worker: KeyError: 'view 7'"
    assert "data.workers=0" in key.fix
    assert multi.what.endswith("ValueError: bad shape")  # a message over several lines stays one line


def test_worker_killed_without_a_traceback_keeps_pytorchs_sentence():
    e = _worker_error(RuntimeError("DataLoader worker (pid(s) 4242) exited unexpectedly"))
    assert e.what == ("reading a training batch failed in a data-loader worker: DataLoader worker (pid(s) 4242) "
                      "exited unexpectedly")


# -- 2, 3. model.sync_bn and bf16 on one CPU process ---------------------------------------------------------------
def test_sync_bn_on_one_cpu_process_is_ignored_with_a_log_line(syn, tmp_path, monkeypatch, capfd):
    run_dir = tmp_path / "run"
    code, out, err = ctxssl(monkeypatch, capfd, "pretrain", "--data", syn, "--out", run_dir, "--device", "cpu",
                            *TINY_CLI, "--set", "model.sync_bn=true")
    assert code == 0, err
    log = (run_dir / "train.log").read_text()
    assert "model.sync_bn ignored: one process" in log
    assert [m["step"] for m in metrics(run_dir)] == [1, 2]
    assert load_checkpoint(run_dir).step == 2


def test_bf16_on_cpu_trains_with_finite_loss_and_an_fp32_checkpoint(syn, fp32_run, tmp_path, monkeypatch, capfd):
    run_dir = tmp_path / "run"
    code, _, err = ctxssl(monkeypatch, capfd, "pretrain", "--data", syn, "--out", run_dir, "--device", "cpu",
                          *TINY_CLI, "--set", "train.precision=bf16")
    assert code == 0, err
    rows, base = metrics(run_dir), metrics(fp32_run)
    assert [m["step"] for m in rows] == [1, 2] and all(math.isfinite(m["loss"]) for m in rows)
    # bf16 autocast is in effect: the same seed and batch give a loss close to fp32's, but not the same one
    assert rows[0]["loss"] != base[0]["loss"]
    assert abs(rows[0]["loss"] - base[0]["loss"]) < 0.05 * abs(base[0]["loss"])
    run = load_run(run_dir, None, torch.device("cpu"))  # verified, strict into the model built from the spec
    assert run.step == 2 and run.spec.train.precision == "bf16"
    assert {t.dtype for t in run.model.state_dict().values() if t.is_floating_point()} == {torch.float32}


# -- 4. writes the disk refuses --------------------------------------------------------------------------------
@pytest.mark.parametrize("code", list(DISK_ERRORS), ids=errno.errorcode.get)
def test_prepare_manifest_write_refused_by_the_disk(tmp_path, monkeypatch, capfd, code):
    out = tmp_path / "d"
    hit = fail_writes_to(monkeypatch, ".manifest.yaml.tmp-", code)
    rc, _, err = ctxssl(monkeypatch, capfd, "prepare", "synthetic", "--out", out, "--classes", "2",
                        "--objects-per-class", "3", "--views", "3", "--resolution", "16", "--workers", "0")
    assert hit, "the manifest was never written"
    line = one_error_line(rc, err, *DISK_ERRORS[code])
    assert str(hit[0].with_name("manifest.yaml")) in line  # the file, not its temp name
    assert not is_prepared(out) and not (out / "manifest.yaml").exists()
    assert no_temp_files(tmp_path) == []  # the half-written manifest is gone
    monkeypatch.setattr(Path, "write_bytes", REAL_WRITE_BYTES)  # space again: the same command completes
    rc, _, err = ctxssl(monkeypatch, capfd, "prepare", "synthetic", "--out", out, "--classes", "2",
                        "--objects-per-class", "3", "--views", "3", "--resolution", "16", "--workers", "0")
    assert rc == 0, err
    PreparedDataset(out).verify()


def test_prepare_chunk_write_on_a_full_disk_names_the_chunk(tmp_path, monkeypatch, capfd):
    """The writer streams a chunk through open()/write(), whose OSError names no file: the message still does."""
    from ctxssl_cli.data import prepared_writer

    class FullDisk:
        def __init__(self, f):
            self.f, self.written = f, 0

        def write(self, data):
            if self.written:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.written += self.f.write(data)  # the first object fits, then the disk is full
            return self.written

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(prepared_writer, "open", lambda path, mode="r": FullDisk(open(path, mode)), raising=False)
    out = tmp_path / "d"
    rc, _, err = ctxssl(monkeypatch, capfd, "prepare", "synthetic", "--out", out, "--classes", "2",
                        "--objects-per-class", "3", "--views", "3", "--resolution", "16", "--workers", "0")
    line = one_error_line(rc, err, *DISK_ERRORS[errno.ENOSPC])
    assert f"{os.sep}train{os.sep}images_00000.u8 " in line and ".tmp-" not in line
    assert not is_prepared(out) and no_temp_files(tmp_path) == []


@pytest.mark.parametrize("kind", ["enospc-safetensors", "erofs-oserror"])
def test_pretrain_checkpoint_write_refused_keeps_the_last_good_checkpoint(syn, tmp_path, monkeypatch, capfd, kind):
    """The first checkpoint (step 1) is written; the second fails half-way: safetensors 0.8 reports a full disk
    as SafetensorError("... (os error 28)"), an OSError comes from our own fsync/rename."""
    real, calls = ckpt_mod.save_file, []

    def save_file(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 1:
            return real(tensors, filename, metadata=metadata)
        Path(filename).write_bytes(b"\x00" * 100)  # a partial file at the temp name
        if kind == "enospc-safetensors":
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), filename)

    monkeypatch.setattr(ckpt_mod, "save_file", save_file)
    run_dir = tmp_path / "run"
    code, _, err = ctxssl(monkeypatch, capfd, "pretrain", "--data", syn, "--out", run_dir, "--device", "cpu",
                          *TINY_CLI, "--set", "train.checkpoint_every=1")
    words = DISK_ERRORS[errno.ENOSPC if kind.startswith("enospc") else errno.EROFS]
    line = one_error_line(code, err, *words, str(run_dir / CHECKPOINT_NAME))
    assert ".tmp-" not in line and len(calls) == 2
    assert no_temp_files(run_dir) == []
    assert load_checkpoint(run_dir).step == 1  # the step-1 checkpoint is whole and verified


def test_evaluate_report_write_refused_by_a_full_disk(fp32_run, tmp_path, monkeypatch, capfd):
    monkeypatch.setattr("ctxssl_cli.evaluate.pipeline.evaluate_run", lambda *a, **k: {})  # no probes: the write
    hit = fail_writes_to(monkeypatch, ".report.json.tmp-", errno.ENOSPC)
    out = tmp_path / "eval"
    code, _, err = ctxssl(monkeypatch, capfd, "evaluate", "--checkpoint", fp32_run, "--out", out, "--device", "cpu")
    assert hit, "report.json was never written"
    one_error_line(code, err, *DISK_ERRORS[errno.ENOSPC], str(out / "report.json"), f"df -h {out}")
    assert not (out / "report.json").exists() and no_temp_files(out) == []


def test_a_library_os_error_is_named_not_an_internal_error(fp32_run, tmp_path, monkeypatch, capfd):
    """embed streams its file tensor by tensor (tensorfile.StreamWriter): an OS error part-way through (a file
    system turned read-only) still gives the one line naming the file, and no temp file stays."""
    def add(self, name, tensor):
        self.f.write(b"partial")
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr("ctxssl_cli.tensorfile.StreamWriter.add", add)
    out = tmp_path / "e.safetensors"
    code, _, err = ctxssl(monkeypatch, capfd, "embed", "--checkpoint", fp32_run, "--context-length", 2,
                          "--out", out, "--device", "cpu")
    one_error_line(code, err, *DISK_ERRORS[errno.EROFS], str(tmp_path))
    assert not out.exists() and no_temp_files(tmp_path) == []


def test_a_full_disk_while_z_is_written_in_pieces(fp32_run, tmp_path, monkeypatch, capfd):
    """embed writes each z in pieces as they are made (StreamWriter.add_pieces): a full disk part-way through a
    z gives the one line naming the file, and neither the temp file nor the target stays."""
    real = StreamWriter.add_pieces

    def add_pieces(self, name, shape, dtype, pieces):
        if not name.startswith("z."):
            return real(self, name, shape, dtype, pieces)
        next(iter(pieces))
        self.f.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(StreamWriter, "add_pieces", add_pieces)
    out = tmp_path / "e.safetensors"
    code, _, err = ctxssl(monkeypatch, capfd, "embed", "--checkpoint", fp32_run, "--context-length", 2,
                          "--out", out, "--device", "cpu")
    one_error_line(code, err, *DISK_ERRORS[errno.ENOSPC], str(tmp_path))
    assert not out.exists() and no_temp_files(tmp_path) == []

"""`prepare cifar10` and `prepare images`: 2D datasets in the prepared format (one image per object, no latents,
the augment2d action schema). CIFAR-10 binary archives and folders written byte by byte here; the python
(pickled) version refused unread; image folders with every colour mode; bad inputs, resume, overwrite, the CLI."""

import io
import os
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from ctxssl_cli.cli.app import app
from ctxssl_cli.data import cifar10, prepared
from ctxssl_cli.data.cifar10 import pack_cifar10
from ctxssl_cli.data.image_folder import pack_image_folder
from ctxssl_cli.data.prepared import PreparedDataset, is_prepared
from ctxssl_cli.data.schema import AUGMENT2D
from ctxssl_cli.errors import CtxsslError

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
PER_BATCH = {**{f"data_batch_{i}.bin": 3 for i in range(1, 6)}, "test_batch.bin": 4}


# -- CIFAR-10 helpers ------------------------------------------------------------------------------------------
def make_cifar(root: Path, seed=0) -> tuple[Path, dict]:
    """root/cifar-10-batches-bin with a few records per batch; returns (folder, {file: (labels, (n, 3, 32, 32))})."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    truth = {}
    for name, n in PER_BATCH.items():
        labels = rng.integers(0, 10, n).astype(np.uint8)
        pixels = rng.integers(0, 256, (n, 3, 32, 32)).astype(np.uint8)  # (n, R/G/B plane, row, column)
        records = np.concatenate([labels[:, None], pixels.reshape(n, 3072)], axis=1)  # 1 label + 1024 R, G, B
        (folder / name).write_bytes(records.tobytes())
        truth[name] = (labels.astype(np.int64), pixels)
    (folder / "batches.meta.txt").write_text("\n".join(CLASSES) + "\n\n")  # blank lines, as the real file has
    (folder / "readme.html").write_text("<html>not read</html>")
    return folder, truth


def make_tar(folder: Path, path: Path) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        tf.add(folder, arcname=folder.name)
    return path


def _add(tf: tarfile.TarFile, name: str, data: bytes = b"", kind=tarfile.REGTYPE, link=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, len(data) if kind == tarfile.REGTYPE else 0
    tf.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


@pytest.fixture
def cifar(tmp_path):
    return make_cifar(tmp_path / "src")


@pytest.mark.parametrize("kind", ["archive", "folder", "parent folder"])
def test_cifar_round_trips_pixels_and_labels_exactly(cifar, tmp_path, kind):
    folder, truth = cifar
    source = {"archive": lambda: make_tar(folder, tmp_path / "cifar-10-binary.tar.gz"),
              "folder": lambda: folder, "parent folder": lambda: folder.parent}[kind]()
    summary = pack_cifar10(source, tmp_path / "out", progress=False)
    assert summary["counts"] == {"train": 15, "val": 4} and summary["n_views"] == 1
    ds = PreparedDataset(tmp_path / "out")
    ds.verify()
    assert ds.classes == CLASSES and ds.resolution == 32 and ds.n_views == 1 and ds.codec == "raw"
    assert ds.manifest["action_schema"] == AUGMENT2D.to_manifest() and ds.manifest["dataset"] == "cifar10"
    assert all(0 < m < 1 for m in ds.mean) and all(0 < s < 1 for s in ds.std)
    train_files = [f"data_batch_{i}.bin" for i in range(1, 6)]
    for split, names, first in (("train", train_files, 0), ("val", ["test_batch.bin"], 15)):
        s = ds.split(split)
        labels = np.concatenate([truth[n][0] for n in names])
        pixels = np.concatenate([truth[n][1] for n in names])
        assert s.latents.shape == (len(labels), 1, 0) and s.latents.dtype == np.float32
        assert np.array_equal(s.labels, labels)
        assert s.object_ids == [f"{CLASSES[lab]}/{first + i:05d}" for i, lab in enumerate(labels)]
        got = s.images(np.arange(len(labels)), np.zeros(len(labels), np.int64)).numpy()  # (B, 3, 32, 32)
        assert np.array_equal(got, pixels)


def test_cifar_jpeg_codec_keeps_shapes(cifar, tmp_path):
    pack_cifar10(cifar[0], tmp_path / "out", codec="jpeg", progress=False)
    s = PreparedDataset(tmp_path / "out").split("val")
    assert s.images([0, 3], [0, 0]).shape == (2, 3, 32, 32)


def test_python_version_is_refused_without_being_read(tmp_path, monkeypatch):
    pickled = pickle.dumps({"data": [1, 2, 3]})
    arch = tmp_path / "cifar.tar.gz"  # not named like the python version: its members give it away
    with tarfile.open(arch, "w:gz") as tf:
        _add(tf, "cifar-10-batches-py", kind=tarfile.DIRTYPE)
        _add(tf, "cifar-10-batches-py/data_batch_1", pickled)

    def never(*_a, **_k):
        raise AssertionError("a pickled member was opened")

    monkeypatch.setattr(tarfile.TarFile, "extractfile", never)
    monkeypatch.setattr(pickle, "load", never)
    monkeypatch.setattr(pickle, "loads", never)
    for source in (arch, tmp_path / "cifar-10-python.tar.gz"):
        if not source.exists():
            source.write_bytes(b"never opened")
        with pytest.raises(CtxsslError) as e:
            pack_cifar10(source, tmp_path / "out", progress=False)
        msg = e.value.message
        assert "pickled" in msg and "never unpickles" in msg and "cifar-10-binary.tar.gz" in msg and cifar10.URL in msg
    folder = tmp_path / "py" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    (folder / "data_batch_1").write_bytes(pickled)
    for source in (folder, folder.parent):
        with pytest.raises(CtxsslError, match="pickled"):
            pack_cifar10(source, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["archive", "folder"])
def test_truncated_batch_names_file_and_size(cifar, tmp_path, kind):
    folder, _ = cifar
    path = folder / "data_batch_3.bin"
    path.write_bytes(path.read_bytes()[:-1])
    source = make_tar(folder, tmp_path / "c.tar.gz") if kind == "archive" else folder
    with pytest.raises(CtxsslError, match=r"data_batch_3\.bin.* is 9,218 bytes, not a whole number of 3073-byte"):
        pack_cifar10(source, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("member, kind, words", [
    ("cifar-10-batches-bin/../evil", tarfile.REGTYPE, "'..'"),
    ("/cifar-10-batches-bin/readme.html", tarfile.REGTYPE, "absolute path"),
    ("cifar-10-batches-bin/link", tarfile.SYMTYPE, "is a link"),
    ("cifar-10-batches-bin/fifo", tarfile.FIFOTYPE, "special file"),
])
def test_unsafe_archive_members_are_refused_before_reading(cifar, tmp_path, monkeypatch, member, kind, words):
    folder, _ = cifar
    arch = tmp_path / "c.tar.gz"
    with tarfile.open(arch, "w:gz") as tf:
        tf.add(folder, arcname=folder.name)
        _add(tf, member, b"x" if kind == tarfile.REGTYPE else b"", kind, link="/etc/passwd")
    monkeypatch.setattr(tarfile.TarFile, "extractfile", lambda *a: (_ for _ in ()).throw(AssertionError("read")))
    with pytest.raises(CtxsslError, match=words):
        pack_cifar10(arch, tmp_path / "out", progress=False)


def test_cifar_missing_batch_and_bad_label(cifar, tmp_path):
    folder, _ = cifar
    (folder / "test_batch.bin").rename(tmp_path / "elsewhere.bin")
    with pytest.raises(CtxsslError, match=r"test_batch\.bin is missing"):
        pack_cifar10(folder, tmp_path / "out", progress=False)
    data = bytearray((tmp_path / "elsewhere.bin").read_bytes())
    data[3073] = 10  # record 1's label: there are 10 classes (0..9)
    (folder / "test_batch.bin").write_bytes(bytes(data))
    with pytest.raises(CtxsslError, match=r"test_batch\.bin .*record 1 has label 10, but batches\.meta\.txt names 10"):
        pack_cifar10(folder, tmp_path / "out", progress=False)


def test_cifar_refuses_to_overwrite_and_resumes(cifar, tmp_path, monkeypatch, interrupt_chunks):
    folder, _ = cifar
    monkeypatch.setattr(prepared, "CHUNK_BYTES", 4 * 3 * 32 * 32)  # 4 objects per chunk: 6 chunks
    interrupt_chunks(2)
    with pytest.raises(KeyboardInterrupt):
        pack_cifar10(folder, tmp_path / "out", progress=False)
    assert not is_prepared(tmp_path / "out")
    interrupt_chunks.disarm()
    pack_cifar10(folder, tmp_path / "out", progress=False)  # resumes
    first = PreparedDataset(tmp_path / "out")
    first.verify()
    with pytest.raises(CtxsslError, match="already holds a prepared dataset.*--overwrite"):
        pack_cifar10(folder, tmp_path / "out", progress=False)
    pack_cifar10(folder, tmp_path / "fresh", progress=False)
    assert first.manifest["files"] == PreparedDataset(tmp_path / "fresh").manifest["files"]  # resumed == fresh
    pack_cifar10(folder, tmp_path / "out", codec="jpeg", overwrite=True, progress=False)
    assert PreparedDataset(tmp_path / "out").codec == "jpeg"


# -- image folders ---------------------------------------------------------------------------------------------
def _smooth(w, h, seed):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx / w, yy / h, (xx + yy) / (w + h)], -1) * rng.uniform(80, 250, 3)
    return img.clip(0, 255).astype(np.uint8)  # (h, w, 3)


def make_images(root: Path) -> Path:
    """cat: JPEG, greyscale PNG, RGBA PNG, WebP, 16-bit PNG; dog: palette PNG, exact-size PNG, JPEG, greyscale JPEG."""
    cat, dog = root / "cat", root / "dog"
    cat.mkdir(parents=True)
    dog.mkdir()
    Image.fromarray(_smooth(80, 60, 0)).save(cat / "a.jpg", quality=95)
    Image.fromarray(_smooth(70, 90, 1)[..., 0], "L").save(cat / "grey.png")
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[..., 0], rgba[:, 20:, 3] = 255, 255  # red everywhere; left half fully transparent
    Image.fromarray(rgba, "RGBA").save(cat / "alpha.png")
    Image.fromarray(_smooth(100, 64, 2)).save(cat / "b.webp", lossless=True)
    Image.fromarray((np.arange(48 * 40).reshape(40, 48) * 30).astype(np.uint16)).save(cat / "deep.png")
    (cat / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")  # hidden: skipped
    Image.fromarray(_smooth(50, 50, 3)).convert("P", palette=Image.ADAPTIVE).save(dog / "pal.png")
    Image.fromarray(_smooth(32, 48, 4)).save(dog / "exact.png")  # width 32 = --resolution: crop only
    Image.fromarray(_smooth(64, 64, 5)).save(dog / "c.jpeg")
    Image.fromarray(_smooth(33, 40, 6)[..., 1], "L").save(dog / "d.jpg")
    return root


def _pack_images(src, out, **kw):
    kw.setdefault("resolution", 32)
    kw.setdefault("codec", "raw")
    kw.setdefault("workers", 0)
    return pack_image_folder(src, out, progress=False, **kw)


def _by_id(ds):
    out = {}
    for name in ds.splits:
        s = ds.split(name)
        imgs = s.images(np.arange(len(s)), np.zeros(len(s), np.int64)).numpy()  # (N, 3, H, W)
        out.update({key: (name, int(lab), img) for key, lab, img in zip(s.object_ids, s.labels, imgs)})
    return out


def test_image_folder_modes_shapes_split_and_schema(tmp_path):
    src = make_images(tmp_path / "imgs")
    summary = _pack_images(src, tmp_path / "out")
    assert summary["counts"] == {"train": 7, "val": 2}  # per class round(0.2 * n), at least 1: 1 of 5, 1 of 4
    ds = PreparedDataset(tmp_path / "out")
    ds.verify()
    assert ds.classes == ["cat", "dog"] and ds.n_views == 1 and ds.resolution == 32
    assert ds.manifest["action_schema"] == AUGMENT2D.to_manifest() and ds.manifest["dataset"] == "images"
    got = _by_id(ds)
    assert sorted(got) == sorted(["cat/a.jpg", "cat/grey.png", "cat/alpha.png", "cat/b.webp", "cat/deep.png",
                                  "dog/pal.png", "dog/exact.png", "dog/c.jpeg", "dog/d.jpg"])
    assert all(img.shape == (3, 32, 32) and img.dtype == np.uint8 for _, _, img in got.values())
    assert {key: lab for key, (_, lab, _) in got.items()} == {key: int(key.startswith("dog")) for key in got}
    val = [k for k, (sp, _, _) in got.items() if sp == "val"]
    assert sorted(k.split("/")[0] for k in val) == ["cat", "dog"]  # stratified: one of each class
    for split in ds.splits:
        assert ds.split(split).latents.shape == (len(ds.split(split)), 1, 0)
    exact = np.asarray(Image.open(src / "dog" / "exact.png"))[8:40].transpose(2, 0, 1)  # centre 32 rows of 48
    assert np.array_equal(got["dog/exact.png"][2], exact)
    grey = got["cat/grey.png"][2]
    assert np.array_equal(grey[0], grey[1]) and np.array_equal(grey[1], grey[2])
    alpha = got["cat/alpha.png"][2]  # 40 -> 32 px; transparent left half composited on black
    assert alpha[:, :, :14].max() == 0 and (alpha[0, :, 18:] == 255).all() and alpha[1:, :, 18:].max() == 0
    deep = got["cat/deep.png"][2]
    assert 100 < int(deep.max()) <= 255 and deep.min() < 50  # 16-bit values scaled, not clipped to white
    # deterministic for a seed, stratified whatever the seed
    _pack_images(src, tmp_path / "again", workers=2)
    assert _by_id(PreparedDataset(tmp_path / "again")).keys() == got.keys()
    for name in ds.splits:
        assert PreparedDataset(tmp_path / "again").split(name).object_ids == ds.split(name).object_ids
    _pack_images(src, tmp_path / "seed1", seed=1, val_fraction=0.5)
    s1 = PreparedDataset(tmp_path / "seed1")
    assert s1.manifest["counts"] == {"train": 5, "val": 4}  # round(2.5) = 2 of cat, 2 of dog
    assert sorted(np.bincount(s1.split("val").labels).tolist()) == [2, 2]


def test_image_folder_bad_inputs_name_the_file(tmp_path):
    src = make_images(tmp_path / "imgs")
    (src / "empty").mkdir()
    (src / "empty" / ".DS_Store").write_bytes(b"x")
    with pytest.raises(CtxsslError, match=r"class folder .*empty holds no images"):
        _pack_images(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    (src / "empty" / ".DS_Store").unlink()
    (src / "empty").rmdir()
    (src / "dog" / "notes.txt").write_text("not an image")
    with pytest.raises(CtxsslError, match=r"notes\.txt is not an image"):
        _pack_images(src, tmp_path / "out", workers=2)  # raised in a worker process: still one clear error
    assert not is_prepared(tmp_path / "out")
    (src / "dog" / "notes.txt").unlink()
    with pytest.raises(CtxsslError, match=r"exact\.png is 32x48: its shorter side is smaller than --resolution 33.*"
                                          r"smaller --resolution \(at most 32\)"):
        _pack_images(src, tmp_path / "small", resolution=33)
    Image.fromarray(_smooth(40, 40, 7)).save(src / "dog" / "e.gif")
    with pytest.raises(CtxsslError, match=r"e\.gif is a GIF image"):
        _pack_images(src, tmp_path / "gif")
    (src / "dog" / "e.gif").unlink()
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(CtxsslError, match=r"--val-fraction .* is outside \(0, 1\)"):
            _pack_images(src, tmp_path / "vf", val_fraction=bad)
    (src / "stray.png").write_bytes(b"")
    with pytest.raises(CtxsslError, match=r"stray\.png is a file directly in the source folder"):
        _pack_images(src, tmp_path / "stray")


def test_image_folder_refuses_to_overwrite(tmp_path):
    src = make_images(tmp_path / "imgs")
    _pack_images(src, tmp_path / "out")
    with pytest.raises(CtxsslError, match="already holds a prepared dataset"):
        _pack_images(src, tmp_path / "out")
    _pack_images(src, tmp_path / "out", resolution=16, overwrite=True)
    assert PreparedDataset(tmp_path / "out").resolution == 16


# -- the CLI ---------------------------------------------------------------------------------------------------
def test_cli_options_of_the_2d_commands():
    root = typer.main.get_command(app).commands["prepare"]
    opts = {name: {o for p in root.commands[name].params for o in p.opts if o.startswith("--")} - {"--help"}
            for name in ("cifar10", "images")}
    assert opts == {"cifar10": {"--source", "--out", "--codec", "--overwrite"},
                    "images": {"--source", "--out", "--val-fraction", "--resolution", "--codec", "--workers",
                               "--seed", "--overwrite"}}


def test_cli_packs_and_errors_in_one_line(cifar, tmp_path):
    folder, _ = cifar
    r = CliRunner().invoke(app, ["prepare", "cifar10", "--source", str(folder), "--out", str(tmp_path / "c")])
    assert r.exit_code == 0, r.output
    assert "counts: {'train': 15, 'val': 4}" in r.output and is_prepared(tmp_path / "c")
    src = make_images(tmp_path / "imgs")
    r = CliRunner().invoke(app, ["prepare", "images", "--source", str(src), "--out", str(tmp_path / "i"),
                                 "--resolution", "32", "--workers", "0"])
    assert r.exit_code == 0, r.output
    assert is_prepared(tmp_path / "i")
    (folder / "data_batch_1.bin").write_bytes(b"\x01" * 100)
    env = {k: v for k, v in os.environ.items() if k != "CTXSSL_DEBUG"}
    for args, words in ((["cifar10", "--source", folder, "--out", tmp_path / "c2"], "data_batch_1.bin"),
                        (["cifar10"], "cifar-10-binary.tar.gz"),
                        (["images", "--source", src, "--out", tmp_path / "i2", "--val-fraction", "1.5"],
                         "--val-fraction")):
        p = subprocess.run([sys.executable, "-m", "ctxssl_cli", "prepare", *map(str, args)], capture_output=True,
                           text=True, env=env, timeout=120)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1, p.stderr
        assert lines[0].startswith("Error: ") and " — " in lines[0] and words in lines[0], lines

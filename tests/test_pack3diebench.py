"""Packing a 3DIEBench-layout folder or .tar.gz into the prepared format: round trip, tar safety, bad inputs,
resume, refusal to overwrite, published split files."""

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ctxssl_cli.data import pack3diebench, prepared
from ctxssl_cli.data.pack3diebench import pack_3diebench
from ctxssl_cli.data.prepared import PreparedDataset
from ctxssl_cli.errors import CtxsslError

SYNSETS = ("02691156", "02747177", "02773838")


def _image(rng, res):
    """A smooth picture (gradient + a coloured box) that JPEG keeps well."""
    yy, xx = np.mgrid[0:res, 0:res] / res
    img = np.stack([xx, yy, 0.5 * (xx + yy)], -1) * rng.uniform(60, 200, 3)
    x0, y0 = rng.integers(0, res // 2, 2)
    img[y0:y0 + res // 3, x0:x0 + res // 3] = rng.uniform(0, 255, 3)
    return img.clip(0, 255).astype(np.uint8)


def _latent(rng):
    return np.array([*rng.uniform(-1.5, 1.5, 3), rng.uniform(), rng.uniform(0, 0.78), rng.uniform(0, 6.28),
                     rng.uniform()], np.float32)


def make_raw(root: Path, n_obj=(4, 3, 5), views=4, res=32, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    for syn, n in zip(SYNSETS, n_obj):
        for o in range(n):
            d = root / syn / f"obj{o:03d}"
            d.mkdir(parents=True)
            for v in range(views):
                Image.fromarray(_image(rng, res)).save(d / f"image_{v}.jpg", quality=95)
                np.save(d / f"latent_{v}.npy", _latent(rng))
    return root


def make_tar(src: Path, tar_path: Path, prefix="3DIEBench") -> Path:
    with tarfile.open(tar_path, "w:gz") as tf:
        tf.add(src, arcname=prefix)
    return tar_path


@pytest.fixture
def raw(tmp_path):
    return make_raw(tmp_path / "raw")


def _pack(src, out, **kw):
    kw.setdefault("resolution", 16)
    kw.setdefault("codec", "raw")
    return pack_3diebench(src, out, workers=0, progress=False, **kw)


def _expected_view(raw, key, v, res):
    im = Image.open(raw / key / f"image_{v}.jpg").convert("RGB").resize((res, res), Image.BILINEAR)
    return np.asarray(im).transpose(2, 0, 1)


@pytest.mark.parametrize("codec", ["raw", "jpeg"])
def test_round_trip_preserves_latents_labels_images(raw, tmp_path, codec):
    summary = _pack(raw, tmp_path / "out", codec=codec)
    assert summary["counts"] == {"train": 10, "val": 2} or sum(summary["counts"].values()) == 12
    ds = PreparedDataset(tmp_path / "out")
    assert ds.classes == list(SYNSETS) and ds.n_views == 4 and ds.resolution == 16 and ds.codec == codec
    assert ds.mean == prepared.PAPER_MEAN and ds.std == prepared.PAPER_STD
    ds.verify()
    seen = set()
    for name in ("train", "val"):
        s = ds.split(name)
        assert s.latents.shape == (s.n_objects, 4, 7) and s.labels.dtype == np.int64
        for i, key in enumerate(s.object_ids):
            seen.add(key)
            assert s.labels[i] == SYNSETS.index(key.split("/")[0])
            for v in range(4):
                np.testing.assert_array_equal(s.latents[i, v], np.load(raw / key / f"latent_{v}.npy"))
            got = s.images(np.full(4, i), np.arange(4)).numpy()
            want = np.stack([_expected_view(raw, key, v, 16) for v in range(4)])
            if codec == "raw":
                np.testing.assert_array_equal(got, want)
            else:
                assert np.abs(got.astype(int) - want).mean() < 6
    assert len(seen) == 12


def test_stratified_split_has_every_class_in_both_splits(raw, tmp_path):
    _pack(raw, tmp_path / "out")
    ds = PreparedDataset(tmp_path / "out")
    assert ds.manifest["split"] == "stratified-seed-0"
    for name in ("train", "val"):
        assert set(ds.split(name).labels.tolist()) == {0, 1, 2}
    assert not set(ds.split("train").object_ids) & set(ds.split("val").object_ids)


def test_tar_gives_the_same_dataset_as_the_folder(raw, tmp_path):
    _pack(raw, tmp_path / "a", codec="jpeg")
    _pack(make_tar(raw, tmp_path / "3DIEBench.tar.gz"), tmp_path / "b", codec="jpeg")
    for rel in ("train/images_00000.jpgs", "train/meta.safetensors", "train/object_ids.txt",
                "val/images_00000.jpgs", "val/meta.safetensors", "val/object_ids.txt"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    assert not (tmp_path / "b" / ".incomplete").exists()


def _evil_tar(path: Path, kind: str) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        data = b"x" * 10
        info = tarfile.TarInfo("3DIEBench/02691156/obj000/image_0.jpg")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
        if kind == "symlink":
            info = tarfile.TarInfo("3DIEBench/02691156/obj000/latent_0.npy")
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tf.addfile(info)
        else:
            info = tarfile.TarInfo("/tmp/evil.jpg" if kind == "absolute" else "3DIEBench/../../evil.jpg")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("kind,words", [("absolute", "absolute path"), ("dotdot", "'..'"), ("symlink", "link")])
def test_unsafe_tar_members_are_refused_and_nothing_lands_outside(tmp_path, kind, words):
    work = tmp_path / "work"
    work.mkdir()
    tar = _evil_tar(work / "evil.tar.gz", kind)
    with pytest.raises(CtxsslError, match=words):
        _pack(tar, work / "out")
    assert sorted(p.name for p in work.iterdir()) == ["evil.tar.gz", "out"]
    assert not (tmp_path / "evil.jpg").exists() and not Path("/tmp/evil.jpg").exists()
    outside = [p for p in (work / "out").rglob("*") if not p.resolve().is_relative_to((work / "out").resolve())]
    assert outside == []


def test_corrupt_tar_gz(raw, tmp_path):
    tar = make_tar(raw, tmp_path / "t.tar.gz")
    data = tar.read_bytes()
    tar.write_bytes(data[: len(data) // 2])
    with pytest.raises(CtxsslError, match="truncated or corrupt"):
        _pack(tar, tmp_path / "out")


def test_missing_source(tmp_path):
    with pytest.raises(CtxsslError, match="does not exist"):
        _pack(tmp_path / "nope", tmp_path / "out")


def test_truncated_jpeg_names_object_and_view(raw, tmp_path):
    img = raw / SYNSETS[1] / "obj002" / "image_3.jpg"
    img.write_bytes(img.read_bytes()[:200])
    with pytest.raises(CtxsslError, match=rf"object {SYNSETS[1]}/obj002 view 3: image_3.jpg is truncated"):
        _pack(raw, tmp_path / "out")


def test_garbage_jpeg(raw, tmp_path):
    (raw / SYNSETS[0] / "obj001" / "image_0.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(CtxsslError, match=rf"object {SYNSETS[0]}/obj001 view 0: .*corrupt"):
        _pack(raw, tmp_path / "out")


@pytest.mark.parametrize("bad,words", [(np.zeros(6, np.float32), r"shape \(6,\)"),
                                       (np.zeros((3, 3), np.float32), r"shape \(3, 3\)"),
                                       (np.array([0, 0, 0, 1.5, 0, 0, 0], np.float32), "floor hue = 1.5"),
                                       (np.array([0, 0, 4.0, 0, 0, 0, 0], np.float32), "rotation z = 4"),
                                       (np.array([np.nan] * 7, np.float32), "non-finite")])
def test_bad_latent(raw, tmp_path, bad, words):
    np.save(raw / SYNSETS[2] / "obj004" / "latent_1.npy", bad)
    with pytest.raises(CtxsslError, match=rf"object {SYNSETS[2]}/obj004 view 1.*{words}"):
        _pack(raw, tmp_path / "out")


def test_missing_view_and_latent(raw, tmp_path):
    (raw / SYNSETS[0] / "obj002" / "latent_2.npy").unlink()
    with pytest.raises(CtxsslError, match=rf"{SYNSETS[0]}/obj002 lacks latent_2.npy"):
        _pack(raw, tmp_path / "out")
    (raw / SYNSETS[0] / "obj003" / "image_3.jpg").unlink()
    with pytest.raises(CtxsslError, match=rf"{SYNSETS[0]}/obj003 lacks image_3.jpg"):
        _pack(raw, tmp_path / "out2")


def test_synset_without_objects(raw, tmp_path):
    (raw / "04000000").mkdir()
    with pytest.raises(CtxsslError, match="synset folder 04000000 holds no objects"):
        _pack(raw, tmp_path / "out")
    with pytest.raises(CtxsslError, match="synset folder 04000000 holds no objects"):
        _pack(make_tar(raw, tmp_path / "t.tar.gz"), tmp_path / "out2")


def test_not_a_3diebench_folder(tmp_path):
    (tmp_path / "src" / "a" / "b").mkdir(parents=True)
    with pytest.raises(CtxsslError, match="no 3DIEBench objects"):
        _pack(tmp_path / "src", tmp_path / "out")
    assert not (tmp_path / "out").exists()  # a bad source leaves --out untouched


def test_refuses_existing_dataset_and_foreign_files(raw, tmp_path):
    _pack(raw, tmp_path / "out")
    with pytest.raises(CtxsslError, match="already holds a prepared dataset.*--overwrite"):
        _pack(raw, tmp_path / "out")
    first = PreparedDataset(tmp_path / "out").manifest_sha256
    _pack(raw, tmp_path / "out", overwrite=True)
    assert PreparedDataset(tmp_path / "out").manifest_sha256 == first
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    for ow in (False, True):
        with pytest.raises(CtxsslError, match="not part of a ctxssl dataset"):
            _pack(raw, tmp_path / "mine", overwrite=ow)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_resume_after_interruption_equals_uninterrupted(raw, tmp_path, monkeypatch, interrupt_chunks):
    monkeypatch.setattr(prepared, "CHUNK_BYTES", 3 * 4 * 3 * 16 * 16)  # 3 objects per chunk
    _pack(raw, tmp_path / "ref", codec="jpeg")
    interrupt_chunks(2)
    with pytest.raises(KeyboardInterrupt):
        _pack(raw, tmp_path / "out", codec="jpeg")
    assert not prepared.is_prepared(tmp_path / "out")
    with pytest.raises(CtxsslError, match="unfinished prepare"):
        PreparedDataset(tmp_path / "out")
    with pytest.raises(CtxsslError, match="different settings"):
        _pack(raw, tmp_path / "out", codec="raw")
    real, done = interrupt_chunks.real, []
    monkeypatch.setattr(prepared.PreparedWriter, "write_chunk",
                        lambda self, c, o: (done.append(c), real(self, c, o)))
    _pack(raw, tmp_path / "out", codec="jpeg")
    ref, out = PreparedDataset(tmp_path / "ref"), PreparedDataset(tmp_path / "out")
    n_chunks = sum(len(v) for v in ref.manifest["chunks"].values())
    assert n_chunks >= 4 and len(done) == n_chunks - 2  # the 2 finished chunks were not redone
    assert ref.manifest_sha256 == out.manifest_sha256
    for f in ref.manifest["files"]:
        assert (tmp_path / "ref" / f["path"]).read_bytes() == (tmp_path / "out" / f["path"]).read_bytes()


def test_tar_resume_reuses_staged_objects(raw, tmp_path, monkeypatch):
    tar = make_tar(raw, tmp_path / "t.tar.gz")
    monkeypatch.setattr(pack3diebench, "_make_splits", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        _pack(tar, tmp_path / "out")
    assert (tmp_path / "out" / ".incomplete" / "staging" / "index.yaml").exists()
    monkeypatch.undo()
    _pack(tar, tmp_path / "out")
    _pack(raw, tmp_path / "ref")
    for rel in ("train/images_00000.u8", "val/meta.safetensors"):
        assert (tmp_path / "out" / rel).read_bytes() == (tmp_path / "ref" / rel).read_bytes()


# -- published split files --------------------------------------------------------------------------------------
def _keys(raw):
    return sorted(f"{s.parent.name}/{s.name}" for s in raw.glob("*/*"))


def test_published_split_files_npy_and_text(raw, tmp_path):
    keys = _keys(raw)
    train, val = keys[2:], keys[:2]
    np.save(tmp_path / "train_images.npy", np.array(["/" + k for k in train]))
    np.save(tmp_path / "val_images.npy", np.array(["/" + k for k in val]))
    lab = {s: 10 + i for i, s in enumerate(SYNSETS)}  # published labels need not be 0-based
    np.save(tmp_path / "train_labels.npy", np.array([lab[k.split("/")[0]] for k in train]))
    np.save(tmp_path / "val_labels.npy", np.array([lab[k.split("/")[0]] for k in val]))
    _pack(raw, tmp_path / "out", train_list=tmp_path / "train_images.npy", val_list=tmp_path / "val_images.npy",
          train_labels=tmp_path / "train_labels.npy", val_labels=tmp_path / "val_labels.npy")
    ds = PreparedDataset(tmp_path / "out")
    assert ds.manifest["split"] == "published"
    assert ds.split("train").object_ids == train and ds.split("val").object_ids == val
    assert ds.split("val").labels.tolist() == [10, 10]
    assert ds.classes[10:13] == list(SYNSETS)
    (tmp_path / "tr.txt").write_text("\n".join(train))
    (tmp_path / "va.txt").write_text("\n".join(val[:1]))
    _pack(raw, tmp_path / "out2", train_list=tmp_path / "tr.txt", val_list=tmp_path / "va.txt")
    ds2 = PreparedDataset(tmp_path / "out2")
    assert ds2.split("val").object_ids == val[:1] and ds2.classes == list(SYNSETS)


def test_split_file_naming_a_missing_object(raw, tmp_path):
    keys = _keys(raw)
    (tmp_path / "tr.txt").write_text("\n".join(keys[2:] + ["02691156/ghost"]))
    (tmp_path / "va.txt").write_text("\n".join(keys[:2]))
    with pytest.raises(CtxsslError, match="names object 02691156/ghost, which is not in"):
        _pack(raw, tmp_path / "out", train_list=tmp_path / "tr.txt", val_list=tmp_path / "va.txt")


def test_split_file_that_needs_pickle(raw, tmp_path):
    np.save(tmp_path / "tr.npy", np.array(["a/b", None], dtype=object), allow_pickle=True)
    (tmp_path / "va.txt").write_text("a/b")
    with pytest.raises(CtxsslError, match="needs pickle.*re-save it as a text list"):
        _pack(raw, tmp_path / "out", train_list=tmp_path / "tr.npy", val_list=tmp_path / "va.txt")


def test_out_inside_source_is_skipped(raw):
    _pack(raw, raw / "prepared")
    assert sum(PreparedDataset(raw / "prepared").manifest["counts"].values()) == 12

"""The prepared format: writer -> reader round trip over several chunks, both codecs; manifest validation;
checksums; normalisation statistics; pickling for DataLoader workers."""

import pickle

import numpy as np
import pytest
import yaml

from ctxssl_cli.data import prepared
from ctxssl_cli.data.prepared import PreparedDataset, PreparedWriter, encode_views, is_prepared
from ctxssl_cli.errors import CtxsslError

V, R = 3, 8


def _objects(n, seed):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:R, 0:R]
    imgs = np.empty((n, V, R, R, 3), np.uint8)  # smooth images: JPEG keeps them within a few levels
    for i in range(n):
        for v in range(V):
            imgs[i, v] = (rng.uniform(40, 200, 3) + 4 * (xx + yy)[..., None]).astype(np.uint8)
    lat = rng.uniform(0, 0.5, (n, V, 7)).astype(np.float32)
    return imgs, lat


def write(root, codec="raw", n=(7, 3), mean=None, std=None, chunk_objects=2, monkeypatch=None):
    if monkeypatch is not None:
        monkeypatch.setattr(prepared, "CHUNK_BYTES", chunk_objects * V * 3 * R * R)
    data = {s: _objects(k, seed) for seed, (s, k) in enumerate(zip(("train", "val"), n))}
    w = PreparedWriter(root, dataset="synthetic", resolution=R, codec=codec, settings={"t": 1})
    w.plan(n_views=V, classes=["a", "b"],
           splits={s: ([f"s/{s}{i}" for i in range(len(d[0]))], np.arange(len(d[0])) % 2) for s, d in data.items()},
           split_source="test", source={"kind": "test"}, mean=mean, std=std)
    for c in w.pending():
        imgs, lat = data[c.split]
        objs = []
        for i in range(c.start, c.stop):
            payload, hist = encode_views(imgs[i], codec)
            objs.append((payload, lat[i], hist))
        w.write_chunk(c, objs)
    w.finalize()
    return data


@pytest.mark.parametrize("codec", ["raw", "jpeg"])
def test_round_trip_over_chunks(tmp_path, monkeypatch, codec):
    data = write(tmp_path / "d", codec, monkeypatch=monkeypatch)
    ds = PreparedDataset(tmp_path / "d")
    assert is_prepared(tmp_path / "d") and ds.codec == codec and ds.n_views == V and ds.resolution == R
    assert len(ds.manifest["chunks"]["train"]) == 4  # 7 objects, 2 per chunk
    ds.verify()
    for name, (imgs, lat) in data.items():
        s = ds.split(name)
        np.testing.assert_array_equal(s.latents, lat)
        assert s.labels.tolist() == (np.arange(len(imgs)) % 2).tolist()
        assert s.object_ids[0] == f"s/{name}0"
        rng = np.random.default_rng(1)
        obj, view = rng.integers(0, len(imgs), 20), rng.integers(0, V, 20)
        got = s.images(obj, view)
        assert got.shape == (20, 3, R, R) and str(got.dtype) == "torch.uint8"
        want = imgs[obj, view].transpose(0, 3, 1, 2)
        if codec == "raw":
            np.testing.assert_array_equal(got.numpy(), want)
        else:
            assert np.abs(got.numpy().astype(int) - want).mean() < 4
        assert s.images(np.zeros(0, int), np.zeros(0, int)).shape == (0, 3, R, R)
        with pytest.raises(IndexError):
            s.images([len(imgs)], [0])


def test_normalisation_computed_over_train(tmp_path):
    data = write(tmp_path / "d")
    ds = PreparedDataset(tmp_path / "d")
    x = data["train"][0].reshape(-1, 3) / 255.0
    np.testing.assert_allclose(ds.mean, x.mean(0), atol=1e-5)
    np.testing.assert_allclose(ds.std, x.std(0), atol=1e-5)
    write(tmp_path / "e", mean=(0.1, 0.2, 0.3), std=(1, 2, 3))
    assert PreparedDataset(tmp_path / "e").mean == (0.1, 0.2, 0.3)


def test_manifest_is_written_last_and_work_folder_removed(tmp_path):
    write(tmp_path / "d")
    m = yaml.safe_load((tmp_path / "d" / "manifest.yaml").read_text())
    assert m["format"] == "ctxssl-prepared" and m["version"] == 1 and m["counts"] == {"train": 7, "val": 3}
    assert all(len(f["sha256"]) == 64 for f in m["files"])
    assert not (tmp_path / "d" / ".incomplete").exists()
    names = sorted(p.name for p in (tmp_path / "d" / "train").iterdir())
    assert names == ["images_00000.u8", "meta.safetensors", "object_ids.txt"]


def test_reader_errors(tmp_path):
    with pytest.raises(CtxsslError, match="no prepared dataset.*ctxssl prepare"):
        PreparedDataset(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CtxsslError, match="not a prepared dataset"):
        PreparedDataset(tmp_path / "empty")
    write(tmp_path / "d")
    ds = PreparedDataset(tmp_path / "d")
    with pytest.raises(CtxsslError, match="no split 'test'.*train, val"):
        ds.split("test")
    mpath = tmp_path / "d" / "manifest.yaml"
    m = yaml.safe_load(mpath.read_text())
    mpath.write_text(yaml.safe_dump(dict(m, version=2)))
    with pytest.raises(CtxsslError, match="version 2"):
        PreparedDataset(tmp_path / "d")
    mpath.write_text(yaml.safe_dump(m))
    img = tmp_path / "d" / "train" / "images_00000.u8"
    data = bytearray(img.read_bytes())
    data[5] ^= 0xFF
    img.write_bytes(bytes(data))
    PreparedDataset(tmp_path / "d")  # same size: opening is cheap and does not hash ...
    with pytest.raises(CtxsslError, match="does not match its checksum"):
        PreparedDataset(tmp_path / "d").verify()  # ... verify() does
    img.write_bytes(bytes(data[:-10]))
    with pytest.raises(CtxsslError, match="missing or truncated"):
        PreparedDataset(tmp_path / "d")


def test_manifest_sha_identifies_data(tmp_path):
    write(tmp_path / "a")
    write(tmp_path / "b")
    a, b = PreparedDataset(tmp_path / "a"), PreparedDataset(tmp_path / "b")
    assert a.manifest_sha256 == b.manifest_sha256
    write(tmp_path / "c", n=(6, 3))
    assert PreparedDataset(tmp_path / "c").manifest_sha256 != a.manifest_sha256


@pytest.mark.parametrize("codec", ["raw", "jpeg"])
def test_split_pickles_light_and_reopens(tmp_path, codec):
    write(tmp_path / "d", codec)
    s = PreparedDataset(tmp_path / "d").split("train")
    s.images([0, 1], [0, 1])  # opens memory maps
    blob = pickle.dumps(s)
    assert len(blob) < 1000  # the path and the split name, not the arrays or the memory maps
    s2 = pickle.loads(blob)
    assert (s2.images([3], [2]) == s.images([3], [2])).all()

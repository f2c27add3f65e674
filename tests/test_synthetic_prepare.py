"""`prepare_synthetic`: the prepared layout and the raw 3DIEBench layout, worker-count independence, resume,
refusal to overwrite, and the raw layout -> pack -> prepared round trip on rendered data."""

import numpy as np
import pytest
import yaml

from ctxssl_cli.data import prepared
from ctxssl_cli.data.pack3diebench import pack_3diebench
from ctxssl_cli.data.prepared import PreparedDataset
from ctxssl_cli.data.raw_layout import synset_name
from ctxssl_cli.data.render import CLASS_NAMES, render_object
from ctxssl_cli.data.synthetic import RAW_MARKER, prepare_synthetic, stale_renderer, synthetic_manifest
from ctxssl_cli.errors import CtxsslError

TINY = dict(classes=3, objects_per_class=4, views=3, resolution=16, seed=7, progress=False)


def test_prepared_layout(tmp_path):
    summary = prepare_synthetic(tmp_path / "d", workers=0, **TINY)
    assert summary["views"] == 36 and summary["views_per_s"] > 0 and summary["size_bytes"] > 36 * 3 * 16 * 16
    ds = PreparedDataset(tmp_path / "d")
    assert ds.manifest["dataset"] == "synthetic" and ds.codec == "raw" and ds.classes == CLASS_NAMES[:3]
    assert ds.manifest["split"] == "stratified-seed-7" and ds.manifest["counts"] == {"train": 9, "val": 3}
    assert ds.manifest["normalisation"]["source"] == "computed over the train split"
    assert all(0.0 < m < 1.0 for m in ds.mean) and all(0.0 < s < 0.5 for s in ds.std)
    tr, va = ds.split("train"), ds.split("val")
    assert set(tr.labels.tolist()) == set(va.labels.tolist()) == {0, 1, 2}
    assert not set(tr.object_ids) & set(va.object_ids)
    key = va.object_ids[1]
    assert key.split("/")[0] == synset_name(int(va.labels[1]))
    images, latents = render_object(7, int(va.labels[1]), int(key.split("/")[1]), 3, 16)
    np.testing.assert_array_equal(va.latents[1], latents)
    np.testing.assert_array_equal(va.images([1, 1, 1], [0, 1, 2]).numpy(), images.transpose(0, 3, 1, 2))


def test_worker_count_does_not_change_the_data(tmp_path):
    prepare_synthetic(tmp_path / "a", workers=0, **TINY)
    prepare_synthetic(tmp_path / "b", workers=2, **TINY)
    a, b = PreparedDataset(tmp_path / "a"), PreparedDataset(tmp_path / "b")
    assert a.manifest_sha256 == b.manifest_sha256
    for f in a.manifest["files"]:
        assert (tmp_path / "a" / f["path"]).read_bytes() == (tmp_path / "b" / f["path"]).read_bytes()


def test_resume_and_refuse_overwrite(tmp_path, monkeypatch, interrupt_chunks):
    monkeypatch.setattr(prepared, "CHUNK_BYTES", 2 * 3 * 3 * 16 * 16)  # 2 objects per chunk
    prepare_synthetic(tmp_path / "ref", workers=0, **TINY)
    interrupt_chunks(3)
    with pytest.raises(KeyboardInterrupt):
        prepare_synthetic(tmp_path / "d", workers=0, **TINY)
    interrupt_chunks.disarm()
    prepare_synthetic(tmp_path / "d", workers=0, **TINY)
    assert PreparedDataset(tmp_path / "d").manifest_sha256 == PreparedDataset(tmp_path / "ref").manifest_sha256
    with pytest.raises(CtxsslError, match="already holds a prepared dataset.*--overwrite"):
        prepare_synthetic(tmp_path / "d", workers=0, **TINY)
    prepare_synthetic(tmp_path / "d", workers=0, overwrite=True, **dict(TINY, seed=8))
    assert PreparedDataset(tmp_path / "d").manifest["split"] == "stratified-seed-8"


def test_raw_layout_resume_refuse_and_pack_round_trip(tmp_path):
    raw = tmp_path / "raw"
    prepare_synthetic(raw, layout="3diebench", workers=2, **TINY)
    objs = sorted(p for p in raw.glob("*/*") if p.is_dir())
    assert len(objs) == 12 and yaml.safe_load((raw / RAW_MARKER).read_text())["complete"] is True
    assert sorted(p.name for p in objs[0].iterdir()) == sorted(
        [f"image_{i}.jpg" for i in range(3)] + [f"latent_{i}.npy" for i in range(3)])
    with pytest.raises(CtxsslError, match="already holds a rendered dataset"):
        prepare_synthetic(raw, layout="3diebench", workers=0, **TINY)
    # an interrupted render: marker says incomplete, some objects missing -> a rerun fills them in
    import shutil

    shutil.rmtree(objs[5])
    (raw / RAW_MARKER).write_text(yaml.safe_dump(dict(yaml.safe_load((raw / RAW_MARKER).read_text()),
                                                      complete=False)))
    before = objs[0].joinpath("image_0.jpg").stat().st_mtime_ns
    prepare_synthetic(raw, layout="3diebench", workers=0, **TINY)
    assert objs[5].is_dir() and objs[0].joinpath("image_0.jpg").stat().st_mtime_ns == before
    # raw layout -> prepared (same resolution: no resize): latents and labels exact, images within JPEG loss
    pack_3diebench(raw, tmp_path / "p", resolution=16, codec="raw", workers=0, progress=False)
    ref, got = _by_id(PreparedDataset(_direct(tmp_path))), _by_id(PreparedDataset(tmp_path / "p"))
    assert ref.keys() == got.keys() and len(ref) == 12
    for key, (label, lat, imgs) in ref.items():
        assert got[key][0] == label
        np.testing.assert_array_equal(got[key][1], lat)
        assert np.abs(got[key][2].astype(int) - imgs).mean() < 4


def _by_id(ds):
    """object id -> (label, latents (V, 7), images (V, 3, H, W)) over both splits (the splits may differ)."""
    out = {}
    for name in ("train", "val"):
        s = ds.split(name)
        for i, key in enumerate(s.object_ids):
            out[key] = (int(s.labels[i]), s.latents[i], s.images([i] * s.n_views, range(s.n_views)).numpy())
    return out


def _direct(tmp_path):
    prepare_synthetic(tmp_path / "direct", workers=0, **TINY)
    return tmp_path / "direct"


def test_raw_layout_refuses_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("keep")
    with pytest.raises(CtxsslError, match="did not write"):
        prepare_synthetic(tmp_path / "mine", layout="3diebench", workers=0, overwrite=True, **TINY)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "keep"


def test_bad_arguments(tmp_path):
    with pytest.raises(CtxsslError, match="layout"):
        prepare_synthetic(tmp_path / "x", layout="zip", **TINY)
    with pytest.raises(CtxsslError, match="classes"):
        prepare_synthetic(tmp_path / "x", **dict(TINY, classes=len(CLASS_NAMES) + 1))
    with pytest.raises(CtxsslError, match="views"):
        prepare_synthetic(tmp_path / "x", **dict(TINY, views=1))


def _as_renderer_version(root, version):
    """Rewrite a prepared synthetic dataset's manifest as if an older renderer had made it."""
    m = yaml.safe_load((root / "manifest.yaml").read_text())
    m["source"]["renderer_version"] = version
    (root / "manifest.yaml").write_text(yaml.safe_dump(m, sort_keys=False))


def test_a_dataset_from_an_older_renderer_is_refused_by_prepare_and_pretrain(tmp_path, monkeypatch):
    from ctxssl_cli import paths
    from ctxssl_cli.train.launch import resolve_data
    from ctxssl_cli.cli.prepare import synthetic

    d = tmp_path / "home" / "datasets" / "synthetic"
    prepare_synthetic(d, workers=0, **TINY)
    assert stale_renderer(synthetic_manifest(d)) is None and stale_renderer(synthetic_manifest(tmp_path / "nothing")) is None
    _as_renderer_version(d, 1)
    assert stale_renderer(synthetic_manifest(d)) == 1
    monkeypatch.setattr(paths, "default_synthetic_dir", lambda: d)
    with pytest.raises(CtxsslError, match="renderer version 1.*--overwrite"):
        synthetic(out_dir=None, classes=3, objects_per_class=4, views=3, resolution=16, seed=7, layout="prepared",
                  workers=0, overwrite=False)
    with pytest.raises(CtxsslError, match="renderer version 1"):
        resolve_data("", is_main=True)  # the default benchmark
    assert resolve_data(str(d), is_main=True) == d  # named on purpose: used as it is

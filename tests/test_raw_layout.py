"""Writing rendered objects in 3DIEBench's raw layout (ctxssl_cli/data/raw_layout.py)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ctxssl_cli.data.raw_layout import synset_name, write_raw_object
from ctxssl_cli.data.render import render_object
from ctxssl_cli.data.rotations import check_latents


def test_write_raw_object(tmp_path):
    imgs, lat = render_object(0, 2, 1, 4, 64)
    write_raw_object(tmp_path, synset_name(2), "00001", imgs, lat)
    obj = tmp_path / synset_name(2) / "00001"
    names = sorted(p.name for p in obj.iterdir())
    assert names == sorted([f"image_{i}.jpg" for i in range(4)] + [f"latent_{i}.npy" for i in range(4)])
    for i in range(4):
        with Image.open(obj / f"image_{i}.jpg") as im:
            assert im.format == "JPEG" and im.mode == "RGB" and im.size == (64, 64)
            px = np.asarray(im)
        assert np.abs(px.astype(np.int16) - imgs[i].astype(np.int16)).mean() < 3  # quality 95
        v = np.load(obj / f"latent_{i}.npy", allow_pickle=False)
        assert v.shape == (7,) and v.dtype == np.float32
        assert np.array_equal(v, lat[i])
        check_latents(v, "written")
    # nothing but the object folder (no temp folders left)
    assert [p.name for p in (tmp_path / synset_name(2)).iterdir()] == ["00001"]


def test_rewrite_replaces_atomically(tmp_path):
    imgs, lat = render_object(0, 0, 0, 3, 32)
    write_raw_object(tmp_path, "syn", "obj", imgs, lat)
    imgs2, lat2 = render_object(0, 0, 1, 2, 32)
    write_raw_object(tmp_path, "syn", "obj", imgs2, lat2)
    obj = tmp_path / "syn" / "obj"
    assert len(list(obj.glob("image_*.jpg"))) == 2
    assert np.array_equal(np.load(obj / "latent_1.npy", allow_pickle=False), lat2[1])
    assert [p.name for p in (tmp_path / "syn").iterdir()] == ["obj"]


def test_bad_inputs_leave_nothing(tmp_path):
    imgs, lat = render_object(0, 0, 0, 2, 32)
    with pytest.raises(ValueError):
        write_raw_object(tmp_path, "syn", "../evil", imgs, lat)
    with pytest.raises(ValueError):
        write_raw_object(tmp_path, "syn", "obj", imgs, lat[:1])
    with pytest.raises(ValueError):
        write_raw_object(tmp_path, "syn", "obj", imgs.astype(np.float32), lat)
    assert not (tmp_path / "syn" / "obj").exists()


def test_synset_name():
    names = [synset_name(c) for c in range(20)]
    assert len(set(names)) == 20
    assert all(len(n) == 8 and n.isdigit() for n in names)
    assert names == sorted(names)  # sorted folder order = class order

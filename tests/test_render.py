"""The built-in synthetic renderer (ctxssl_cli/data/render.py): determinism, latents, visible factors."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import pytest

from ctxssl_cli.data import render
from ctxssl_cli.data.rotations import LATENT_RANGES, check_latents

RES = 32


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def _lat(**kw) -> np.ndarray:
    """One fixed view; keyword overrides by name."""
    names = ("rx", "ry", "rz", "floor", "theta", "phi", "light")
    base = dict(rx=0.3, ry=-0.4, rz=0.8, floor=0.1, theta=0.3, phi=1.0, light=0.0)
    base.update(kw)
    return np.array([[base[n] for n in names]], np.float32)


def _shape(class_idx: int = 0, seed: int = 0) -> render.Shape:
    return render.make_shape(class_idx, np.random.default_rng(seed))


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def test_class_names():
    assert len(render.CLASS_NAMES) >= 10
    assert len(set(render.CLASS_NAMES)) == len(render.CLASS_NAMES)


def test_render_object_shapes_and_dtypes():
    for res in (16, 32, 64):
        imgs, lat = render.render_object(0, 1, 2, 3, res)
        assert imgs.shape == (3, res, res, 3) and imgs.dtype == np.uint8
        assert lat.shape == (3, 7) and lat.dtype == np.float32


def test_deterministic_same_seed_identical_bytes():
    a_img, a_lat = render.render_object(7, 3, 11, 4, RES)
    b_img, b_lat = render.render_object(7, 3, 11, 4, RES)
    assert _digest(a_img) == _digest(b_img)
    assert _digest(a_lat) == _digest(b_lat)


def test_deterministic_across_processes():
    imgs, lat = render.render_object(5, 2, 9, 3, RES)
    code = (
        "import hashlib, numpy as np; from ctxssl_cli.data.render import render_object;"
        "i, l = render_object(5, 2, 9, 3, %d);"
        "print(hashlib.sha256(i.tobytes()).hexdigest(), hashlib.sha256(l.tobytes()).hexdigest())" % RES
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [_digest(imgs), _digest(lat)]


def test_different_objects_differ():
    a, la = render.render_object(0, 4, 0, 2, RES)
    b, lb = render.render_object(0, 4, 1, 2, RES)
    c, lc = render.render_object(1, 4, 0, 2, RES)
    assert not np.array_equal(la, lb) and not np.array_equal(la, lc)
    assert _mad(a, b) > 5 and _mad(a, c) > 5
    # and the shapes themselves differ (not only the latents): same view, two objects of one family
    lat = _lat()
    s0, s1 = _shape(4, 0), _shape(4, 1)
    assert _mad(render.render_shape(s0, lat, RES), render.render_shape(s1, lat, RES)) > 1


def test_object_seed():
    a = render.object_seed(3, 1, 2)
    b = render.object_seed(3, 1, 2)
    assert np.random.default_rng(a).integers(1 << 30) == np.random.default_rng(b).integers(1 << 30)
    c = render.object_seed(3, 2, 1)
    assert np.random.default_rng(render.object_seed(3, 1, 2)).random() != np.random.default_rng(c).random()
    with pytest.raises(ValueError):
        render.object_seed(-1, 0, 0)


def test_latent_ranges():
    lat = render.sample_latents(np.random.default_rng(0), 20000)
    assert lat.shape == (20000, 7) and lat.dtype == np.float32
    check_latents(lat, "sampled")
    for i, (lo, hi) in enumerate(LATENT_RANGES):
        v = lat[:, i]
        assert v.min() >= np.float32(lo) and v.max() <= np.float32(hi)
        # uniform over the whole range: close to both ends, mean in the middle
        span = hi - lo
        assert v.min() < lo + 0.01 * span and v.max() > hi - 0.01 * span
        assert abs(v.mean() - (lo + hi) / 2) < 0.02 * span


def test_views_do_not_depend_on_view_count():
    a_img, a_lat = render.render_object(0, 5, 3, 2, RES)
    b_img, b_lat = render.render_object(0, 5, 3, 5, RES)
    assert np.array_equal(a_lat, b_lat[:2])
    assert np.array_equal(a_img, b_img[:2])


def test_same_view_reproduced_exactly_alone_or_in_a_batch():
    shape = _shape(2, 3)
    lat = render.sample_latents(np.random.default_rng(1), 6)
    batch = render.render_shape(shape, lat, RES)
    for i in range(len(lat)):
        assert np.array_equal(render.render_shape(shape, lat[i : i + 1], RES)[0], batch[i])
    assert np.array_equal(render.render_shape(shape, lat[::-1], RES)[::-1], batch)


def test_rotation_changes_the_image():
    for c in range(len(render.CLASS_NAMES)):
        shape = _shape(c, 0)
        a = render.render_shape(shape, _lat(rx=0.0, ry=0.0, rz=0.0), RES)
        b = render.render_shape(shape, _lat(rx=1.2, ry=-0.7, rz=0.9), RES)
        assert _mad(a, b) > 4, render.CLASS_NAMES[c]


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_objects_are_not_symmetric_under_half_turns(axis):
    """A half turn about any object axis changes the image: objects have no 2-fold symmetry axis."""
    base = _lat(rx=0.0, ry=0.0, rz=0.0)
    turned = base.copy()
    turned[0, axis] = np.pi
    for c in range(len(render.CLASS_NAMES)):
        for seed in range(3):
            shape = _shape(c, seed)
            diff = _mad(render.render_shape(shape, base, RES), render.render_shape(shape, turned, RES))
            assert diff > 3, (render.CLASS_NAMES[c], seed, axis, diff)


def _channel_means(img: np.ndarray) -> np.ndarray:
    return img.reshape(-1, 3).astype(np.float64).mean(0)


def test_light_hue_changes_colour():
    shape = _shape(0, 0)
    means = []
    for hsv in (0.0, 1 / 3, 2 / 3):  # red, green, blue light
        img = render.render_shape(shape, _lat(light=hsv / render.HUE_ARC, floor=0.0), 64)[0]
        means.append(_channel_means(img))
    # under a red / green / blue light, the red / green / blue share of the image is largest
    shares = np.array([m / m.sum() for m in means])
    for i in range(3):
        assert np.argmax(shares[:, i]) == i
    assert np.abs(shares[0] - shares[1]).max() > 0.05


def test_floor_hue_changes_the_floor():
    shape = _shape(1, 0)
    corners = []
    for hsv in (0.0, 1 / 3, 2 / 3):  # red, green, blue floor (and light)
        u = hsv / render.HUE_ARC
        img = render.render_shape(shape, _lat(floor=u, light=u), RES)[0]
        corners.append(_floor_corner(img))
        assert np.argmax(corners[-1]) == round(hsv * 3)
    assert np.abs(corners[0] - corners[1]).max() > 40


def _floor_corner(img: np.ndarray) -> np.ndarray:
    return img[:3, :3].reshape(-1, 3).astype(np.float64).mean(0)  # the top-left corner is floor


def test_hue_scale_does_not_wrap():
    # the relative colour target is a plain difference of hue latents, so hue latents 0 and 1 must look
    # different (red and violet), and nearby latents alike, for that target to be a function of the pixels
    shape = _shape(1, 0)
    corner = {u: _floor_corner(render.render_shape(shape, _lat(floor=u, light=0.5), RES)[0])
              for u in (0.0, 0.01, 0.5, 0.99, 1.0)}
    assert np.abs(corner[0.0] - corner[1.0]).max() > 40
    assert np.abs(corner[0.0] - corner[0.01]).max() < 10 and np.abs(corner[1.0] - corner[0.99]).max() < 10
    assert corner[1.0][2] > corner[1.0][1] and corner[0.0][0] > corner[0.0][2]  # violet is bluish, red is not


def test_classes_differ():
    lat = _lat()
    imgs = [render.render_shape(_shape(c, 0), lat, RES)[0] for c in range(len(render.CLASS_NAMES))]
    for i in range(len(imgs)):
        for j in range(i + 1, len(imgs)):
            assert _mad(imgs[i], imgs[j]) > 3, (render.CLASS_NAMES[i], render.CLASS_NAMES[j])


def test_object_fills_the_frame():
    """The object covers a good part of the image (pixels that differ from an empty floor)."""
    lat = render.sample_latents(np.random.default_rng(2), 8)
    for c in range(len(render.CLASS_NAMES)):
        imgs = render.render_views(c, np.random.default_rng(c), lat, RES)
        # object pixels: different from the median (floor) colour of their image
        floor = np.median(imgs.reshape(len(imgs), -1, 3), axis=1)[:, None, None, :]
        frac = (np.abs(imgs.astype(np.int16) - floor).sum(-1) > 40).mean()
        assert frac > 0.08, render.CLASS_NAMES[c]


def test_bad_inputs():
    with pytest.raises(ValueError):
        render.render_views(len(render.CLASS_NAMES), np.random.default_rng(0), _lat(), RES)
    with pytest.raises(ValueError):
        render.render_views(0, np.random.default_rng(0), np.zeros((2, 6), np.float32), RES)

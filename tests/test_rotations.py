"""Rotation/action conventions against independent computations (scipy and Hamilton products)."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from ctxssl_cli.data.rotations import (absolute_latent, check_latents, euler_xyz_to_matrix, matrix_to_quat,
                                       relative_action)
from ctxssl_cli.errors import CtxsslError


def _latents(n, seed=0):
    rng = np.random.default_rng(seed)
    lat = np.empty((n, 7))
    lat[:, :3] = rng.uniform(-np.pi / 2, np.pi / 2, (n, 3))
    lat[:, 3] = rng.uniform(0, 1, n)
    lat[:, 4] = rng.uniform(0, np.pi / 4, n)
    lat[:, 5] = rng.uniform(0, 2 * np.pi, n)
    lat[:, 6] = rng.uniform(0, 1, n)
    return lat


def _hamilton(p, q):  # scalar-last products, written out by hand
    px, py, pz, pw = np.moveaxis(p, -1, 0)
    qx, qy, qz, qw = np.moveaxis(q, -1, 0)
    return np.stack([pw * qx + px * qw + py * qz - pz * qy,
                     pw * qy - px * qz + py * qw + pz * qx,
                     pw * qz + px * qy - py * qx + pz * qw,
                     pw * qw - px * qx - py * qy - pz * qz], -1)


def _axis_quat(axis, angle):
    q = np.zeros(angle.shape + (4,))
    q[..., axis] = np.sin(angle / 2)
    q[..., 3] = np.cos(angle / 2)
    return q


def test_euler_matches_scipy_extrinsic_xyz():
    ang = _latents(200)[:, :3]
    assert np.allclose(euler_xyz_to_matrix(ang), Rotation.from_euler("xyz", ang).as_matrix(), atol=1e-12)


def test_quaternion_equals_hamilton_composition_up_to_sign():
    ang = _latents(500, 1)[:, :3]
    # extrinsic x, then y, then z: q = qz * qy * qx
    q_ref = _hamilton(_axis_quat(2, ang[:, 2]), _hamilton(_axis_quat(1, ang[:, 1]), _axis_quat(0, ang[:, 0])))
    q = matrix_to_quat(euler_xyz_to_matrix(ang))
    dots = np.abs(np.sum(q * q_ref, axis=1))
    assert np.allclose(dots, 1.0, atol=1e-9)
    assert np.all(q[:, 3] >= 0), "canonical sign: w >= 0"


def test_matrix_to_quat_raw_matches_scipy_from_matrix():
    m = euler_xyz_to_matrix(_latents(500, 2)[:, :3])
    m_rel = np.swapaxes(m[:250], -1, -2) @ m[250:]
    for mats in (m, m_rel):
        assert np.allclose(matrix_to_quat(mats, canonical=False), Rotation.from_matrix(mats).as_quat(), atol=1e-9)


def test_raw_convention_is_the_published_scipy_sign_exactly():
    """canonical=False must give what the published dataset.py computes, sign included:
    (R.from_euler("xyz", a1).inv() * R.from_euler("xyz", a2)).as_quat() and R.from_euler("xyz", a).as_quat()."""
    l1, l2 = _latents(4000, 11), _latents(4000, 12)
    ref_rel = (Rotation.from_euler("xyz", l1[:, :3]).inv() * Rotation.from_euler("xyz", l2[:, :3])).as_quat()
    ref_abs = Rotation.from_euler("xyz", l2[:, :3]).as_quat()
    raw_rel = relative_action(l1, l2, canonical=False)[:, :4]
    raw_abs = absolute_latent(l2, canonical=False)[:, :4]
    assert np.abs(raw_rel - ref_rel).max() < 1e-6  # not merely up to sign
    assert np.abs(raw_abs - ref_abs).max() < 1e-6
    assert (ref_rel[:, 3] < 0).mean() > 0.01  # the sign really differs from the canonical one on some pairs...
    canon = relative_action(l1, l2, canonical=True)[:, :4]
    assert np.all(canon[:, 3] >= 0)  # ...which the canonical form flips
    assert np.allclose(np.abs((canon * raw_rel).sum(1)), 1.0, atol=1e-5)  # the same rotations


def test_relative_action_composes_back():
    l1, l2 = _latents(300, 3), _latents(300, 4)
    a = relative_action(l1, l2)
    assert a.shape == (300, 6) and a.dtype == np.float32
    q1 = absolute_latent(l1)[:, :4].astype(np.float64)
    q2 = absolute_latent(l2)[:, :4].astype(np.float64)
    # q1 * a_rot == q2 up to sign (R1 R1^-1 R2 = R2)
    comp = _hamilton(q1, a[:, :4].astype(np.float64))
    assert np.allclose(np.abs(np.sum(comp * q2, axis=1)), 1.0, atol=1e-5)
    # hue differences are plain (unwrapped) differences, view 2 minus view 1
    assert np.allclose(a[:, 4], l2[:, 3] - l1[:, 3], atol=1e-6)
    assert np.allclose(a[:, 5], l2[:, 6] - l1[:, 6], atol=1e-6)


def test_identity_action_and_absolute_latent():
    lat = _latents(10, 5)
    a = relative_action(lat, lat)
    assert np.allclose(a, [0, 0, 0, 1, 0, 0], atol=1e-6)
    ab = absolute_latent(lat)
    assert np.allclose(ab[:, 4], lat[:, 3]) and np.allclose(ab[:, 5], lat[:, 6])


@pytest.mark.parametrize("bad, words", [
    (np.zeros(6), "7 values"),
    (np.array([0, 0, 0, 1.5, 0, 0, 0.5]), "floor hue"),
    (np.array([2.0, 0, 0, 0.5, 0, 0, 0.5]), "rotation x"),
    (np.array([0, 0, 0, 0.5, 0, 0, np.nan]), "non-finite"),
])
def test_check_latents_rejects(bad, words):
    with pytest.raises(CtxsslError, match=words):
        check_latents(bad, "syn/obj view 3")
    check_latents(_latents(4), "ok")

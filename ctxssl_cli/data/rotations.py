"""Rotation and action conventions shared by the renderer, the packer and the pair sampler.

Conventions (SPEC §3.2, as the published SIE/ContextSSL code does with scipy):
- A view's latent has 7 values: rotation x, y, z (Tait-Bryan, *extrinsic* xyz, i.e. scipy's
  `Rotation.from_euler("xyz", angles)`), floor hue, light theta, light phi, light hue.
  Extrinsic xyz means R = Rz(z) @ Ry(y) @ Rx(x).
- Quaternions are scalar-last (x, y, z, w). q and -q are the same rotation; by default the sign is made
  canonical (w >= 0). `canonical=False` gives exactly the sign the published code gets from scipy
  (`Rotation.from_euler("xyz", a)`, then `r1.inv() * r2`, then `as_quat()`): a view's quaternion is the
  product qz * qy * qx of the elementary quaternions (each with w = cos(angle/2) > 0), the inverse is the
  conjugate, and the relative rotation is their Hamilton product; no sign is normalised along the way, so
  w < 0 for some pairs. Tests pin this against scipy.
- The action mapping view 1 to view 2 is the quaternion of R1^-1 R2 followed by the plain (unwrapped)
  hue differences (floor, light) of view 2 minus view 1: 6 values.
- A view's absolute target latent is the quaternion of R(view), its floor hue and its light hue: 6 values.
"""

from __future__ import annotations

import numpy as np

LATENT_DIM = 7  # rot x, rot y, rot z, floor hue, light theta, light phi, light hue
ACTION_DIM = 6  # quaternion (x, y, z, w) + floor hue diff + light hue diff
ROTATION_SLICE = slice(0, 4)  # the rotation part of an action / absolute latent
COLOR_SLICE = slice(4, 6)  # the color part of an action / absolute latent
HUE_INDICES = (3, 6)  # floor hue, light hue in a 7-value latent

# Valid ranges of each of the 7 latent values (3DIEBench's generator).
LATENT_RANGES = (
    (-np.pi / 2, np.pi / 2),
    (-np.pi / 2, np.pi / 2),
    (-np.pi / 2, np.pi / 2),
    (0.0, 1.0),
    (0.0, np.pi / 4),
    (0.0, 2 * np.pi),
    (0.0, 1.0),
)


def euler_xyz_to_matrix(angles: np.ndarray) -> np.ndarray:
    """Extrinsic xyz Tait-Bryan angles (..., 3) -> rotation matrices (..., 3, 3): Rz @ Ry @ Rx."""
    angles = np.asarray(angles, dtype=np.float64)
    cx, cy, cz = np.cos(angles[..., 0]), np.cos(angles[..., 1]), np.cos(angles[..., 2])
    sx, sy, sz = np.sin(angles[..., 0]), np.sin(angles[..., 1]), np.sin(angles[..., 2])
    m = np.empty(angles.shape[:-1] + (3, 3), dtype=np.float64)
    m[..., 0, 0] = cz * cy
    m[..., 0, 1] = cz * sy * sx - sz * cx
    m[..., 0, 2] = cz * sy * cx + sz * sx
    m[..., 1, 0] = sz * cy
    m[..., 1, 1] = sz * sy * sx + cz * cx
    m[..., 1, 2] = sz * sy * cx - cz * sx
    m[..., 2, 0] = -sy
    m[..., 2, 1] = cy * sx
    m[..., 2, 2] = cy * cx
    return m


def matrix_to_quat(m: np.ndarray, canonical: bool = True) -> np.ndarray:
    """Rotation matrices (..., 3, 3) -> unit quaternions (..., 4), scalar-last (x, y, z, w).

    Shepperd's method: pick the largest of (w, x, y, z) to divide by, which keeps it numerically stable.
    With `canonical`, the sign is flipped so that w >= 0.
    """
    m = np.asarray(m, dtype=np.float64)
    flat = m.reshape(-1, 3, 3)
    n = flat.shape[0]
    tr = flat[:, 0, 0] + flat[:, 1, 1] + flat[:, 2, 2]
    # candidates: 4*w^2, 4*x^2, 4*y^2, 4*z^2 (up to a shared offset)
    cand = np.stack([tr, flat[:, 0, 0], flat[:, 1, 1], flat[:, 2, 2]], axis=1)  # (n, 4)
    choice = np.argmax(cand, axis=1)
    q = np.empty((n, 4), dtype=np.float64)  # (x, y, z, w)
    for c in range(4):
        sel = choice == c
        if not sel.any():
            continue
        f = flat[sel]
        if c == 0:  # w largest
            w = np.sqrt(1.0 + tr[sel]) / 2
            q[sel, 3] = w
            q[sel, 0] = (f[:, 2, 1] - f[:, 1, 2]) / (4 * w)
            q[sel, 1] = (f[:, 0, 2] - f[:, 2, 0]) / (4 * w)
            q[sel, 2] = (f[:, 1, 0] - f[:, 0, 1]) / (4 * w)
        else:
            i = c - 1
            j, k = (i + 1) % 3, (i + 2) % 3
            s = np.sqrt(1.0 + f[:, i, i] - f[:, j, j] - f[:, k, k]) / 2  # |q_i|
            q[sel, i] = s
            q[sel, j] = (f[:, j, i] + f[:, i, j]) / (4 * s)
            q[sel, k] = (f[:, k, i] + f[:, i, k]) / (4 * s)
            q[sel, 3] = (f[:, k, j] - f[:, j, k]) / (4 * s)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    if canonical:
        q *= np.where(q[:, 3:4] < 0, -1.0, 1.0)
    return q.reshape(m.shape[:-2] + (4,))


def quat_multiply(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Hamilton product p * q of scalar-last quaternions (..., 4): the rotation q followed by p."""
    pv, pw = p[..., :3], p[..., 3:]
    qv, qw = q[..., :3], q[..., 3:]
    return np.concatenate([pw * qv + qw * pv + np.cross(pv, qv), pw * qw - (pv * qv).sum(-1, keepdims=True)], axis=-1)


def euler_xyz_to_quat(angles: np.ndarray) -> np.ndarray:
    """Extrinsic xyz angles (..., 3) -> quaternions (..., 4) with scipy's `from_euler("xyz")` sign: qz * qy * qx."""
    angles = np.asarray(angles, dtype=np.float64)
    half = angles / 2
    elementary = []
    for axis in range(3):
        e = np.zeros(angles.shape[:-1] + (4,), dtype=np.float64)
        e[..., axis] = np.sin(half[..., axis])
        e[..., 3] = np.cos(half[..., axis])
        elementary.append(e)
    return quat_multiply(elementary[2], quat_multiply(elementary[1], elementary[0]))


def _raw_relative_quat(ang1: np.ndarray, ang2: np.ndarray) -> np.ndarray:
    """The published code's `(from_euler(a1).inv() * from_euler(a2)).as_quat()`, sign included."""
    q1 = euler_xyz_to_quat(ang1) * np.array([-1.0, -1.0, -1.0, 1.0])  # the inverse: the conjugate
    return quat_multiply(q1, euler_xyz_to_quat(ang2))


def relative_action(lat1: np.ndarray, lat2: np.ndarray, canonical: bool = True) -> np.ndarray:
    """The 6-d action mapping view 1 to view 2, from their 7-value latents (..., 7) -> (..., 6) float32."""
    lat1, lat2 = np.asarray(lat1, np.float64), np.asarray(lat2, np.float64)
    if canonical:
        r1, r2 = euler_xyz_to_matrix(lat1[..., :3]), euler_xyz_to_matrix(lat2[..., :3])
        quat = matrix_to_quat(np.swapaxes(r1, -1, -2) @ r2, canonical=True)  # R1^-1 R2 (R^-1 = R^T), w >= 0
    else:
        quat = _raw_relative_quat(lat1[..., :3], lat2[..., :3])
    hue = lat2[..., list(HUE_INDICES)] - lat1[..., list(HUE_INDICES)]
    return np.concatenate([quat, hue], axis=-1).astype(np.float32)


def absolute_latent(lat: np.ndarray, canonical: bool = True) -> np.ndarray:
    """A view's 6-d absolute target: quaternion of R(view), floor hue, light hue. (..., 7) -> (..., 6)."""
    lat = np.asarray(lat, np.float64)
    quat = (matrix_to_quat(euler_xyz_to_matrix(lat[..., :3]), canonical=True) if canonical
            else euler_xyz_to_quat(lat[..., :3]))
    return np.concatenate([quat, lat[..., list(HUE_INDICES)]], axis=-1).astype(np.float32)


def check_latents(lat: np.ndarray, where: str) -> None:
    """Raise CtxsslError if `lat` (..., 7) has the wrong shape, non-finite or out-of-range values."""
    from ctxssl_cli.errors import CtxsslError

    lat = np.asarray(lat)
    if lat.shape[-1:] != (LATENT_DIM,):
        raise CtxsslError(
            f"{where}: latent has shape {tuple(lat.shape)}, expected 7 values",
            "each latent_i.npy must hold rot x, y, z, floor hue, light theta, light phi, light hue",
        )
    if not np.all(np.isfinite(lat)):
        raise CtxsslError(f"{where}: latent holds non-finite values", "re-export or re-download that object")
    eps = 1e-4
    names = ("rotation x", "rotation y", "rotation z", "floor hue", "light theta", "light phi", "light hue")
    for i, (lo, hi) in enumerate(LATENT_RANGES):
        v = lat[..., i]
        if np.any(v < lo - eps) or np.any(v > hi + eps):
            bad = float(v[(v < lo - eps) | (v > hi + eps)].flat[0])
            raise CtxsslError(
                f"{where}: {names[i]} = {bad:.4g} is outside [{lo:.4g}, {hi:.4g}]",
                "the latent does not follow 3DIEBench's layout; check the source folder",
            )

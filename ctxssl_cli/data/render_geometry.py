"""Geometry of the synthetic renderer (data/render.py): the parts an object is made of, the camera, and ray
casting against ellipsoids and boxes. Pure numpy, elementwise float32 (see render.py, "Determinism")."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

# --- camera and floor ------------------------------------------------------------------------------
CAMERA_DISTANCE = 2.5
CAMERA_ELEVATION = np.pi / 4
CAMERA_AZIMUTH = -np.pi / 2  # camera on the -y side, looking towards +y and down
HALF_FOV_TAN = 0.36  # tan of the half field of view (about 19.8 degrees)
FLOOR_Z = -0.86  # the floor plane, just under the object's bounding sphere

ELLIPSOID, BOX = 0, 1
FLOAT = np.float32  # per-pixel arithmetic: elementwise float32 (fast, and bit-identical in any process)
_EPS = FLOAT(1e-4)
CORNERS = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], float)  # unit box


# --- object shapes ---------------------------------------------------------------------------------
@dataclass
class Shape:
    """An object in its own frame, centred at the origin: K parts."""

    kind: np.ndarray  # (K,) int: ELLIPSOID or BOX
    center: np.ndarray  # (K, 3) float64
    axes: np.ndarray  # (K, 3) semi-axes / half-extents, float64
    rot: np.ndarray  # (K, 3, 3) part orientation: columns are the part's axes in the object frame
    albedo: np.ndarray  # (K, 3) linear albedo
    bound: float  # a true bounding radius (for culling), >= the object's extent



# --- camera ----------------------------------------------------------------------------------------
def _camera() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    ce, se = np.cos(CAMERA_ELEVATION), np.sin(CAMERA_ELEVATION)
    pos = CAMERA_DISTANCE * np.array([ce * np.cos(CAMERA_AZIMUTH), ce * np.sin(CAMERA_AZIMUTH), se])
    fwd = -pos / np.linalg.norm(pos)
    right = np.cross(fwd, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, fwd)
    return pos, fwd, right, up


def camera_rays(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Camera position (3,) and unit ray directions (n*n, 3) float64, row-major from the top-left pixel."""
    pos, fwd, right, up = _camera()
    c = ((np.arange(n) + 0.5) / n * 2 - 1) * HALF_FOV_TAN
    x = c[None, :].repeat(n, 0)
    y = -c[:, None].repeat(n, 1)
    d = fwd + x[..., None] * right + y[..., None] * up
    d = d.reshape(-1, 3)
    return pos, d / np.linalg.norm(d, axis=1, keepdims=True)


@functools.lru_cache(maxsize=8)
def camera_setup(n: int):
    """Camera position, ray directions (P, 3) float64, floor points (3 arrays (P,) float32) and which rays
    hit the floor; cached per resolution (read-only arrays)."""
    cam, D = camera_rays(n)
    down = D[:, 2] < -1e-9
    tf = np.where(down, (FLOOR_Z - cam[2]) / np.where(down, D[:, 2], -1.0), 0.0)
    pf = cam + tf[:, None] * D
    pf3 = tuple(np.ascontiguousarray(pf[:, j], dtype=FLOAT) for j in range(3))
    Dg = tuple(np.ascontiguousarray(D[:, j].reshape(n, n), dtype=FLOAT) for j in range(3))
    tfl = np.where(down, tf, 1e30).astype(FLOAT).reshape(n, n)
    for x in (D, down, tfl, *pf3, *Dg):
        x.setflags(write=False)
    return cam, D, pf3, down, Dg, tfl


# --- ray casting -----------------------------------------------------------------------------------
def _part_frames(shape: Shape) -> np.ndarray:
    """G_k = rot_k @ diag(1/axes_k): object-frame vector v -> part unit-space coordinates v @ G_k."""
    return shape.rot / shape.axes[:, None, :]


def _hit_part(kind: int, op: list, dp: list, best: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ray parameter t and hit mask (eps < t < best) of rays op + t dp, given in the part's unit space
    (unit sphere for an ellipsoid, [-1, 1]^3 for a box); op/dp are lists of 3 broadcastable float32."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if kind == ELLIPSOID:
            a = dp[0] * dp[0] + dp[1] * dp[1] + dp[2] * dp[2]
            bb = op[0] * dp[0] + op[1] * dp[1] + op[2] * dp[2]
            c = op[0] * op[0] + op[1] * op[1] + op[2] * op[2] - FLOAT(1)
            disc = bb * bb - a * c
            t = (-bb - np.sqrt(np.maximum(disc, FLOAT(0)))) / a
            return t, (disc > 0) & (t > _EPS) & (t < best)
        tmin = tmax = None
        for j in range(3):
            inv = FLOAT(1) / dp[j]
            t1 = (FLOAT(-1) - op[j]) * inv
            t2 = (FLOAT(1) - op[j]) * inv
            lo, hi = np.minimum(t1, t2), np.maximum(t1, t2)
            tmin = lo if tmin is None else np.maximum(tmin, lo)
            tmax = hi if tmax is None else np.minimum(tmax, hi)
        return tmin, (tmin <= tmax) & (tmin > _EPS) & (tmin < best)


def intersect(shape: Shape, o: list, d: list, t_init) -> tuple[np.ndarray, np.ndarray]:
    """Nearest hit of rays o + t d (object frame; o and d are lists of 3 broadcastable float32 arrays)
    with the shape's parts, for eps < t < t_init. Returns (t, part index; -1 where no hit)."""
    G = _part_frames(shape).astype(FLOAT)
    C = shape.center.astype(FLOAT)
    shp = np.broadcast_shapes(*(x.shape for x in o), *(x.shape for x in d))
    best = np.broadcast_to(np.asarray(t_init, FLOAT), shp).copy()
    idx = np.full(shp, -1, np.int8)
    for k in range(len(shape.kind)):
        e = [o[i] - C[k, i] for i in range(3)]
        op = [e[0] * G[k, 0, j] + e[1] * G[k, 1, j] + e[2] * G[k, 2, j] for j in range(3)]
        dp = [d[0] * G[k, 0, j] + d[1] * G[k, 1, j] + d[2] * G[k, 2, j] for j in range(3)]
        t, hit = _hit_part(int(shape.kind[k]), op, dp, best)
        np.copyto(best, t, where=hit)
        idx[hit] = k
    return best, idx


def primary_hits(shape: Shape, R: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Nearest object hit of every camera ray in every view: (t (V, n, n) float32 up to the floor's t,
    part index (V, n, n) int8, -1 where the ray sees the floor). Each part is only tested on the pixel
    rectangle its bounding box projects to in that view."""
    cam, _, _, _, Dg, tfl = camera_setup(n)
    _, fwd, right, up = _camera()
    V, K = len(R), len(shape.kind)
    G = _part_frames(shape)  # (K, 3, 3)
    # composite maps world direction -> part unit space, and the camera in part unit space, per (v, k)
    W = (R[:, None, :, :, None] * G[None, :, None, :, :]).sum(axis=3)  # (V, K, 3, 3) = R_v @ G_k
    cam_obj = (R * cam[None, :, None]).sum(axis=1)  # (V, 3) = R_v^T cam
    e = cam_obj[:, None, :] - shape.center[None]  # (V, K, 3)
    OP = (e[..., :, None] * G[None]).sum(axis=-2)  # (V, K, 3)
    # projected bounding boxes: corners of each part's oriented box, in world, then in pixels
    local = (CORNERS[None] * shape.axes[:, None, :])[..., None, :]  # (K, 8, 1, 3)
    corners = shape.center[:, None, :] + (local * shape.rot[:, None]).sum(-1)  # (K, 8, 3)
    cw = (R[:, None, None, :, :] * corners[None, :, :, None, :]).sum(-1) - cam  # (V, K, 8, 3)
    z = (cw * fwd).sum(-1)
    u = (cw * right).sum(-1) / (z * HALF_FOV_TAN)
    w = (cw * up).sum(-1) / (z * HALF_FOV_TAN)
    col = (u + 1) / 2 * n - 0.5
    row = (1 - w) / 2 * n - 0.5
    c0 = np.clip(np.floor(col.min(-1)) - 1, 0, n).astype(int)
    c1 = np.clip(np.ceil(col.max(-1)) + 2, 0, n).astype(int)
    r0 = np.clip(np.floor(row.min(-1)) - 1, 0, n).astype(int)
    r1 = np.clip(np.ceil(row.max(-1)) + 2, 0, n).astype(int)
    Wf, OPf = W.astype(FLOAT), OP.astype(FLOAT)
    best = np.broadcast_to(tfl, (V, n, n)).copy()
    idx = np.full((V, n, n), -1, np.int8)
    kinds = [int(x) for x in shape.kind]
    for v in range(V):
        for k in range(K):
            if r0[v, k] >= r1[v, k] or c0[v, k] >= c1[v, k]:
                continue
            sl = (slice(r0[v, k], r1[v, k]), slice(c0[v, k], c1[v, k]))
            dx, dy, dz = Dg[0][sl], Dg[1][sl], Dg[2][sl]
            w_ = Wf[v, k]
            dp = [dx * w_[0, j] + dy * w_[1, j] + dz * w_[2, j] for j in range(3)]
            op = [OPf[v, k, j] for j in range(3)]
            b = best[v][sl]
            t, hit = _hit_part(kinds[k], op, dp, b)
            np.copyto(b, t, where=hit)
            idx[v][sl][hit] = k
    return best, idx


def normals(shape: Shape, idx: np.ndarray, p: list) -> list:
    """Unit object-frame normals at hit points p (list of 3 arrays) on parts idx (>= 0)."""
    G = _part_frames(shape).astype(FLOAT)
    R = shape.rot.astype(FLOAT)
    C = shape.center.astype(FLOAT)
    g, r, c = G[idx], R[idx], C[idx]  # (..., 3, 3), (..., 3, 3), (..., 3)
    e = [p[i] - c[..., i] for i in range(3)]
    q = [e[0] * g[..., 0, j] + e[1] * g[..., 1, j] + e[2] * g[..., 2, j] for j in range(3)]
    # ellipsoid: n = G q (gradient of |q|^2); box: the face axis of the largest |q_j|
    n_ell = [g[..., i, 0] * q[0] + g[..., i, 1] * q[1] + g[..., i, 2] * q[2] for i in range(3)]
    aq = np.stack([np.abs(x) for x in q], axis=-1)
    ax = np.argmax(aq, axis=-1)
    sgn = np.sign(np.take_along_axis(np.stack(q, axis=-1), ax[..., None], axis=-1)[..., 0])
    col = np.take_along_axis(r, ax[..., None, None].repeat(3, axis=-2), axis=-1)[..., 0]  # (..., 3)
    is_box = shape.kind[idx] == BOX
    n = [np.where(is_box, col[..., i] * sgn, n_ell[i]) for i in range(3)]
    inv = FLOAT(1) / np.sqrt(n[0] * n[0] + n[1] * n[1] + n[2] * n[2] + FLOAT(1e-20))
    return [x * inv for x in n]

"""Shading of the synthetic renderer (data/render.py): colours, the point light, the floor with the object's
shadow, and Lambert shading of the object's parts, in linear light.

Hues (renderer version 2): a hue latent u in [0, 1] is drawn as HSV hue HUE_ARC * u = 0.75 u, from red (u = 0)
through yellow, green, cyan and blue to violet (u = 1); the floor and the light hue use the same arc.
"""

from __future__ import annotations

import numpy as np

from ctxssl_cli.data.render_geometry import FLOAT, Shape, camera_setup, intersect, normals, primary_hits
from ctxssl_cli.data.rotations import euler_xyz_to_matrix

FLOOR_SATURATION = 0.6
FLOOR_VALUE = 0.6
LIGHT_DISTANCE = 4.0
LIGHT_SATURATION = 0.55
HUE_ARC = 0.75  # a hue latent u in [0, 1] is drawn as HSV hue HUE_ARC * u: red (0) to violet (1), no wrap
AMBIENT = 0.28  # ambient term (half white, half tinted by the light)
DIFFUSE = 0.95
SHADOW_DARKNESS = 0.75  # fraction of the direct light a shadowed floor point loses
GAMMA = 2.2


# --- colour helpers --------------------------------------------------------------------------------
def hsv_to_rgb(h, s, v) -> np.ndarray:
    """Vectorised HSV -> RGB; h, s, v broadcastable arrays in [0, 1]; returns (..., 3) float64."""
    h, s, v = np.broadcast_arrays(np.asarray(h, np.float64), np.asarray(s, np.float64), np.asarray(v, np.float64))
    h6 = (h % 1.0) * 6.0
    i = np.floor(h6).astype(np.int64) % 6
    f = h6 - np.floor(h6)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    r = np.choose(i, [v, q, p, p, t, v])
    g = np.choose(i, [t, v, v, q, p, p])
    b = np.choose(i, [p, p, t, v, v, q])
    return np.stack([r, g, b], axis=-1)


def to_linear(x: np.ndarray) -> np.ndarray:
    return np.power(np.clip(x, 0.0, 1.0), GAMMA)


# --- lights and shading ----------------------------------------------------------------------------
def lights(latents: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per view: light position (world, float64 (V, 3)), light colour (linear (V, 3)), floor albedo."""
    th, ph = latents[:, 4].astype(np.float64), latents[:, 5].astype(np.float64)
    ldir = np.stack([np.sin(th) * np.cos(ph), np.sin(th) * np.sin(ph), np.cos(th)], axis=1)
    lcol = to_linear(hsv_to_rgb(HUE_ARC * latents[:, 6], LIGHT_SATURATION, 1.0))
    floor = to_linear(hsv_to_rgb(HUE_ARC * latents[:, 3], FLOOR_SATURATION, FLOOR_VALUE))
    return LIGHT_DISTANCE * ldir, lcol, floor


def render_chunk(shape: Shape, latents: np.ndarray, n: int) -> np.ndarray:
    """Linear-light images (V, n*n, 3) float32 at the (supersampled) resolution n."""
    V = len(latents)
    cam, D, pf, floor_ok, _, _ = camera_setup(n)
    P = n * n
    R = euler_xyz_to_matrix(latents[:, :3].astype(np.float64))  # (V, 3, 3) object -> world
    Lpos, lcol, falb = lights(latents)
    amb = (AMBIENT * (0.5 + 0.5 * lcol)).astype(FLOAT)  # (V, 3)
    dif = (DIFFUSE * lcol).astype(FLOAT)

    # floor: the same points in every view (camera and floor are fixed); point light per view
    L = Lpos.astype(FLOAT)
    lv = [L[:, j, None] - pf[j][None, :] for j in range(3)]  # (V, P) each, floor point -> light
    a = lv[0] * lv[0] + lv[1] * lv[1] + lv[2] * lv[2]
    lam_f = np.maximum(lv[2], FLOAT(0)) / np.sqrt(a)  # floor normal is +z
    # shadow rays pf -> light (t in (0, 1)): only those through the bounding sphere can be blocked
    pp = pf[0] * pf[0] + pf[1] * pf[1] + pf[2] * pf[2]
    bb = lv[0] * pf[0] + lv[1] * pf[1] + lv[2] * pf[2]
    c = pp - FLOAT(shape.bound**2)
    disc = bb * bb - a * c
    sq = np.sqrt(np.maximum(disc, FLOAT(0)))
    cand = (disc > 0) & (sq > bb) & ((-bb - sq) < a) & floor_ok
    vi, pi = np.nonzero(cand)
    if len(vi):
        Rt = R.astype(FLOAT)[vi]  # world -> object frame is R^T: x_obj_j = sum_i R[i, j] x_i
        po = [pf[j][pi] for j in range(3)]
        dw = [lv[j][vi, pi] for j in range(3)]
        o = [Rt[:, 0, j] * po[0] + Rt[:, 1, j] * po[1] + Rt[:, 2, j] * po[2] for j in range(3)]
        d = [Rt[:, 0, j] * dw[0] + Rt[:, 1, j] * dw[1] + Rt[:, 2, j] * dw[2] for j in range(3)]
        _, hit = intersect(shape, o, d, FLOAT(1))
        lam_f[vi[hit >= 0], pi[hit >= 0]] *= FLOAT(1.0 - SHADOW_DARKNESS)
    img = np.empty((V, P, 3), FLOAT)
    fa = falb.astype(FLOAT)
    for ch in range(3):
        img[..., ch] = (fa[:, ch, None] * amb[:, ch, None]) + (fa[:, ch, None] * dif[:, ch, None]) * lam_f
    img[:, ~floor_ok] = 0.0  # sky (never visible with the default camera)

    # object: nearest part hit per pixel, in front of the floor
    t, idx = primary_hits(shape, R, n)
    vh, ph = np.nonzero(idx.reshape(V, P) >= 0)
    if len(vh):
        k = idx.reshape(V, P)[vh, ph].astype(np.int64)
        th = t.reshape(V, P)[vh, ph]
        pw = cam + th[:, None].astype(np.float64) * D[ph]  # world hit points (N, 3)
        Rv = R[vh]
        p = [(Rv[:, 0, j] * pw[:, 0] + Rv[:, 1, j] * pw[:, 1] + Rv[:, 2, j] * pw[:, 2]).astype(FLOAT)
             for j in range(3)]
        nrm = normals(shape, k, p)
        # light in the object frame: R^T Lpos (the object's centre is the world origin)
        lo = (R * Lpos[:, :, None]).sum(axis=1).astype(FLOAT)[vh]  # (N, 3)
        lv_o = [lo[:, j] - p[j] for j in range(3)]
        inv = FLOAT(1) / np.sqrt(lv_o[0] * lv_o[0] + lv_o[1] * lv_o[1] + lv_o[2] * lv_o[2])
        lam = np.maximum((nrm[0] * lv_o[0] + nrm[1] * lv_o[1] + nrm[2] * lv_o[2]) * inv, FLOAT(0))
        alb = shape.albedo.astype(FLOAT)[k]
        img[vh, ph] = alb * (amb[vh] + dif[vh] * lam[:, None])
    return img

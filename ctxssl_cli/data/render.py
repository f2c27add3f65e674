"""The built-in synthetic 3D benchmark: procedural objects rendered with 3DIEBench's latent semantics.

Pure numpy, no I/O, no OpenGL. SPEC §3.1/§3.2.

Objects. Each class is a shape family (`CLASS_NAMES`): a fixed arrangement of 4-7 parts (ellipsoids and
boxes) whose sizes, offsets, tilts and colours are jittered per object from the object's seed. Every object
has one light "body" colour (so the light's hue shows on it) and accent parts in distinct fixed colours
(red "nose", blue, yellow, green) placed off-axis, so that no rotation maps an object onto itself. Each
object is centred and scaled to a bounding radius of `OBJECT_RADIUS`.

Scene (like 3DIEBench). A pinhole camera at distance 2.5 from the object's centre, elevation pi/4, looking
at the centre; a floor plane under the object with albedo HSV(HUE_ARC * floor_hue, 0.6, 0.6); a point light
at distance `LIGHT_DISTANCE` in direction (theta from the vertical, phi azimuth) with colour
HSV(HUE_ARC * light_hue, `LIGHT_SATURATION`, 1); Lambert shading plus ambient; a hard shadow of the object on
the floor. The view's rotation latent (extrinsic xyz Euler angles, `rotations.euler_xyz_to_matrix`) rotates
the object about its centre. Images are ray cast at `SUPERSAMPLE` x the resolution and box-downsampled
in linear light, then gamma-encoded (sRGB-like 1/2.2) to uint8.

Determinism: the pipeline is written as elementwise float32/float64 numpy (products of 3x3 matrices are
spelled out as sums, never handed to a multithreaded BLAS) and each view's pixels are computed independently
of the other views in the call, so the same inputs give bit-identical images in any process on the same
machine, however the views are batched.

Speed (one core, 2x supersampling): roughly 700 / 240 / 65 views/s at 32 / 64 / 128 px.

Hue scale. A hue latent u in [0, 1] is drawn as HSV hue `HUE_ARC` * u = 0.75 u: from red (u = 0) through
yellow, green, cyan and blue to violet (u = 1), so the two ends of the range look different. The relative
colour target is a plain difference of hue latents (SPEC §3.2, not wrapped); on a full hue circle (renderer
version 1) u = 0 and u = 1 are the same red, so that target is not a function of the pixels near the wrap
and a linear probe on any continuous representation tops out near R² 0.62 (measured: 0.616 on the true
cos/sin of the hues). With the arc it is a smooth function of the pixels.

Latents: 7 float32 per view (rot x, rot y, rot z in [-pi/2, pi/2], floor hue in [0, 1], light theta in
[0, pi/4], light phi in [0, 2 pi], light hue in [0, 1]), uniform, as 3DIEBench draws them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from ctxssl_cli.data.rotations import LATENT_DIM, LATENT_RANGES, euler_xyz_to_matrix

RENDER_VERSION = 2  # bump when the images for a given (seed, class, object, view) change; 2: the hue arc

# --- scene constants -------------------------------------------------------------------------------
CAMERA_DISTANCE = 2.5
CAMERA_ELEVATION = np.pi / 4
CAMERA_AZIMUTH = -np.pi / 2  # camera on the -y side, looking towards +y and down
HALF_FOV_TAN = 0.36  # tan of the half field of view (about 19.8 degrees)
OBJECT_RADIUS = 0.8  # every object is scaled to this bounding radius about its centre
FLOOR_Z = -0.86  # the floor plane, just under the object's bounding sphere
FLOOR_SATURATION = 0.6
FLOOR_VALUE = 0.6
LIGHT_DISTANCE = 4.0
LIGHT_SATURATION = 0.55
HUE_ARC = 0.75  # a hue latent u in [0, 1] is drawn as HSV hue HUE_ARC * u: red (0) to violet (1), no wrap
AMBIENT = 0.28  # ambient term (half white, half tinted by the light)
DIFFUSE = 0.95
SHADOW_DARKNESS = 0.75  # fraction of the direct light a shadowed floor point loses
SUPERSAMPLE = 2
GAMMA = 2.2

ELLIPSOID, BOX = 0, 1
_F = np.float32
_EPS = _F(1e-4)

CLASS_NAMES: list[str] = [
    "snowman",
    "airplane",
    "table",
    "dumbbell",
    "mushroom",
    "chair",
    "tetromino",
    "car",
    "jack",
    "lamp",
    "fish",
    "rocket",
]

# Part colours (sRGB-ish, linearised at use): body (light, so the light hue shows) and four accents.
_PALETTE = np.array(
    [
        [0.92, 0.92, 0.90],  # 0 body
        [0.90, 0.12, 0.10],  # 1 red ("nose")
        [0.12, 0.30, 0.92],  # 2 blue
        [0.95, 0.80, 0.10],  # 3 yellow
        [0.10, 0.75, 0.25],  # 4 green
    ]
)


# --- latents and seeds -----------------------------------------------------------------------------
def object_seed(dataset_seed: int, class_idx: int, obj_idx: int) -> np.random.SeedSequence:
    """The seed of one object: a function of (dataset seed, class, object) only."""
    for name, v in (("dataset seed", dataset_seed), ("class index", class_idx), ("object index", obj_idx)):
        if int(v) != v or v < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {v!r}")
    return np.random.SeedSequence(entropy=(int(dataset_seed), int(class_idx), int(obj_idx)))


def sample_latents(rng: np.random.Generator, n_views: int) -> np.ndarray:
    """(V, 7) float32 latents, uniform in 3DIEBench's ranges. Row i depends only on the rng and i
    (draws are row-major), so the first k views are the same whatever n_views is."""
    u = rng.random((int(n_views), LATENT_DIM))
    lo = np.array([r[0] for r in LATENT_RANGES])
    hi = np.array([r[1] for r in LATENT_RANGES])
    lat = (lo + u * (hi - lo)).astype(np.float32)
    # float32 rounding must not push a value outside its range
    return np.clip(lat, lo.astype(np.float32), hi.astype(np.float32))


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


def _to_linear(x: np.ndarray) -> np.ndarray:
    return np.power(np.clip(x, 0.0, 1.0), GAMMA)


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


class _Builder:
    """Collects parts with per-object jitter drawn from rng, in a fixed order (deterministic)."""

    def __init__(self, rng: np.random.Generator, size_jitter=0.18, pos_jitter=0.05, tilt_jitter=0.12):
        self.rng = rng
        self.sj, self.pj, self.tj = size_jitter, pos_jitter, tilt_jitter
        self.parts: list[tuple[int, np.ndarray, np.ndarray, np.ndarray, int]] = []

    def add(self, kind, center, axes, euler=(0.0, 0.0, 0.0), color=0, jitter=1.0):
        r = self.rng
        c = np.asarray(center, float) + r.normal(0.0, self.pj * jitter, 3)
        a = np.asarray(axes, float) * r.uniform(1 - self.sj * jitter, 1 + self.sj * jitter, 3)
        e = np.asarray(euler, float) + r.normal(0.0, self.tj * jitter, 3)
        self.parts.append((kind, c, a, e, color))

    def ell(self, *args, **kw):
        self.add(ELLIPSOID, *args, **kw)

    def box(self, *args, **kw):
        self.add(BOX, *args, **kw)


def _fam_snowman(b: _Builder) -> None:
    b.ell((0, 0, -0.45), (0.5, 0.5, 0.45))
    b.ell((0, 0, 0.18), (0.36, 0.36, 0.33))
    b.ell((0, 0, 0.62), (0.24, 0.24, 0.23), color=4)  # green head
    b.ell((0, -0.32, 0.64), (0.06, 0.22, 0.06), color=1)  # red nose, pointing -y
    b.box((0.5, 0, 0.22), (0.3, 0.05, 0.05), (0, 0.5, 0), color=2)  # one blue arm, raised
    b.box((0.0, 0.05, 0.88), (0.2, 0.2, 0.07), color=3)  # yellow hat brim


def _fam_airplane(b: _Builder) -> None:
    b.ell((0, 0, 0), (0.95, 0.17, 0.17))  # fuselage
    b.box((0.1, 0, -0.02), (0.2, 0.85, 0.035), color=2)  # blue wings
    b.box((-0.78, 0, 0.25), (0.16, 0.035, 0.22), (0, -0.3, 0), color=3)  # yellow tail fin (up)
    b.box((-0.8, 0, 0.03), (0.12, 0.35, 0.03), color=2)  # tail plane
    b.ell((0.9, 0, 0.02), (0.16, 0.1, 0.1), color=1)  # red nose
    b.ell((0.45, 0, 0.14), (0.22, 0.09, 0.08), color=4)  # green cockpit (top)


def _fam_table(b: _Builder) -> None:
    b.box((0, 0, 0.3), (0.75, 0.5, 0.06))  # top
    b.box((0.6, 0.38, -0.15), (0.06, 0.06, 0.4), color=1)  # legs: one red, one yellow, two blue
    b.box((-0.6, 0.38, -0.15), (0.06, 0.06, 0.4), color=3)
    b.box((0.6, -0.38, -0.15), (0.06, 0.06, 0.4), color=2)
    b.box((-0.6, -0.38, -0.15), (0.06, 0.06, 0.4), color=2)
    b.ell((0.3, -0.15, 0.5), (0.15, 0.15, 0.15), color=4)  # green ball on top, off-centre


def _fam_dumbbell(b: _Builder) -> None:
    b.ell((0.55, 0, 0), (0.38, 0.38, 0.38))  # big bell
    b.ell((-0.6, 0, 0), (0.26, 0.26, 0.26), color=2)  # small blue bell
    b.box((0, 0, 0), (0.6, 0.07, 0.07), color=3)  # yellow bar
    b.ell((0.6, 0, 0.42), (0.1, 0.1, 0.18), color=1)  # red knob on top of the big bell
    b.ell((-0.6, -0.25, 0), (0.08, 0.14, 0.08), color=4)  # green stud on the small bell's side


def _fam_mushroom(b: _Builder) -> None:
    b.ell((0, 0, -0.2), (0.2, 0.2, 0.55))  # stem
    b.ell((0.15, 0, 0.35), (0.7, 0.55, 0.25), (0, 0.35, 0), color=1)  # red cap, off-centre and tilted
    b.ell((0.22, 0, -0.3), (0.13, 0.13, 0.13), color=2)  # blue bump on the stem
    b.ell((-0.25, 0.2, 0.6), (0.14, 0.14, 0.09), color=3)  # yellow spot on the cap
    b.ell((0.3, -0.35, 0.45), (0.1, 0.1, 0.08), color=0)  # white spot


def _fam_chair(b: _Builder) -> None:
    b.box((0, 0, 0), (0.45, 0.45, 0.06))  # seat
    b.box((-0.42, 0, 0.45), (0.05, 0.45, 0.42), color=2)  # blue back
    b.box((0.38, 0.38, -0.35), (0.05, 0.05, 0.32), color=3)  # yellow front legs
    b.box((0.38, -0.38, -0.35), (0.05, 0.05, 0.32), color=3)
    b.box((-0.38, 0, -0.35), (0.05, 0.4, 0.05), (0.0, 0.0, 0.0), color=4)  # green rear runner
    b.ell((-0.42, 0.35, 0.9), (0.1, 0.1, 0.1), color=1)  # red knob on one top corner


def _fam_tetromino(b: _Builder) -> None:
    s = 0.3
    b.box((-s, 0, -s), (s, s, s))  # white cube
    b.box((s, 0, -s), (s, s, s), color=2)  # blue cube right
    b.box((s, 0, s), (s, s, s), color=3)  # yellow cube above it
    b.box((-s, 2 * s, -s), (s * 0.8, s * 0.8, s * 0.8), color=4)  # green cube at the back
    b.ell((-s, -s - 0.1, -s), (0.12, 0.12, 0.12), color=1)  # red ball on the front face


def _fam_car(b: _Builder) -> None:
    b.box((0, 0, -0.05), (0.75, 0.35, 0.15))  # body
    b.box((-0.15, 0, 0.22), (0.35, 0.3, 0.13), color=2)  # blue cabin
    for x, y in ((0.45, 0.36), (0.45, -0.36), (-0.45, 0.36), (-0.45, -0.36)):
        b.ell((x, y, -0.2), (0.17, 0.06, 0.17), color=4 if x > 0 else 3, jitter=0.5)  # wheels
    b.ell((0.75, 0.2, 0.0), (0.06, 0.08, 0.06), color=1)  # one red headlight


def _fam_jack(b: _Builder) -> None:
    b.ell((0.1, 0, 0), (0.85, 0.13, 0.13))  # long white arm
    b.ell((0, 0.1, 0), (0.13, 0.6, 0.13), color=2)  # blue arm
    b.ell((-0.1, 0, 0.1), (0.13, 0.13, 0.4), color=3)  # short yellow arm
    b.ell((0.9, 0, 0), (0.18, 0.18, 0.18), color=1)  # red ball at the +x end
    b.ell((0, 0.65, 0), (0.12, 0.12, 0.12), color=4)  # green ball at the +y end


def _fam_lamp(b: _Builder) -> None:
    b.ell((0, 0, -0.6), (0.45, 0.45, 0.07))  # base
    b.box((0, 0, -0.15), (0.05, 0.05, 0.45), color=3)  # yellow stem
    b.box((0.25, 0, 0.38), (0.3, 0.045, 0.045), (0, -0.5, 0), color=2)  # blue arm, tilted up
    b.ell((0.55, 0, 0.45), (0.25, 0.18, 0.18), (0, 0.6, 0), color=1)  # red head, tilted down
    b.ell((0.1, 0.3, -0.55), (0.08, 0.08, 0.05), color=4)  # green switch on the base


def _fam_fish(b: _Builder) -> None:
    b.ell((0.1, 0, 0), (0.65, 0.2, 0.38))  # body
    b.box((-0.7, 0, 0), (0.2, 0.03, 0.3), (0, 0, 0), color=2)  # blue tail
    b.box((0.0, 0, 0.42), (0.25, 0.03, 0.12), (0, 0.3, 0), color=3)  # yellow dorsal fin
    b.ell((0.5, 0.16, 0.1), (0.08, 0.06, 0.08), color=1)  # red eye, one side only
    b.box((0.15, -0.22, -0.15), (0.15, 0.03, 0.08), (0.5, 0, 0), color=4)  # green fin, other side


def _fam_rocket(b: _Builder) -> None:
    b.ell((0, 0, 0), (0.2, 0.2, 0.85))  # body
    b.ell((0, 0, 0.7), (0.14, 0.14, 0.25), color=1)  # red nose cone
    for k, col in enumerate((2, 3, 4)):  # three fins of different colours and sizes
        ang = 2 * np.pi * k / 3
        r = 0.25 + 0.06 * k
        b.box((r * np.cos(ang), r * np.sin(ang), -0.6), (0.2 + 0.05 * k, 0.025, 0.22), (0, 0, ang), color=col)


_FAMILIES = [
    _fam_snowman,
    _fam_airplane,
    _fam_table,
    _fam_dumbbell,
    _fam_mushroom,
    _fam_chair,
    _fam_tetromino,
    _fam_car,
    _fam_jack,
    _fam_lamp,
    _fam_fish,
    _fam_rocket,
]
assert len(_FAMILIES) == len(CLASS_NAMES)


def _sphere_points(n: int = 200) -> np.ndarray:
    """A fixed Fibonacci set of n unit vectors."""
    i = np.arange(n) + 0.5
    z = 1 - 2 * i / n
    r = np.sqrt(1 - z * z)
    phi = np.pi * (3 - np.sqrt(5)) * i
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


_SPHERE = _sphere_points()
_CORNERS = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], float)


def make_shape(class_idx: int, rng: np.random.Generator) -> Shape:
    """Draw one object of family `class_idx` from rng: parts, jitter, colours; centred and normalised."""
    if not 0 <= int(class_idx) < len(CLASS_NAMES):
        raise ValueError(f"class index {class_idx} is outside [0, {len(CLASS_NAMES)})")
    b = _Builder(rng)
    _FAMILIES[int(class_idx)](b)
    stretch = rng.uniform(0.85, 1.15, 3)  # per-object proportions
    kinds, centers, axes, rots, albedo = [], [], [], [], []
    for kind, c, a, e, col in b.parts:
        kinds.append(kind)
        centers.append(c * stretch)
        axes.append(a * stretch)
        rots.append(euler_xyz_to_matrix(e))
        base = _PALETTE[col] * rng.uniform(0.88, 1.08, 3)
        albedo.append(_to_linear(np.clip(base, 0.02, 0.98)))
    kind = np.array(kinds, np.int64)
    center, ax, rot = np.array(centers), np.array(axes), np.array(rots)
    # surface samples (exact corners for boxes) -> centre (AABB midpoint) and radius
    pts = []
    for k in range(len(kind)):
        unit = _CORNERS if kind[k] == BOX else _SPHERE
        pts.append(center[k] + ((unit * ax[k])[:, None, :] * rot[k][None]).sum(-1))  # rot @ local
    pts = np.concatenate(pts)
    mid = (pts.min(0) + pts.max(0)) / 2
    radius = np.linalg.norm(pts - mid, axis=1).max() * 1.02  # margin for the ellipsoid sampling
    scale = OBJECT_RADIUS / radius
    center = (center - mid) * scale
    ax = ax * scale
    # a true bound for culling: |c| + the part's largest extent
    ext = np.where(kind == BOX, np.linalg.norm(ax, axis=1), ax.max(axis=1))
    bound = float((np.linalg.norm(center, axis=1) + ext).max()) * 1.001 + 1e-4
    return Shape(kind=kind, center=center, axes=ax, rot=rot, albedo=np.array(albedo), bound=bound)


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
def _camera_setup(n: int):
    """Camera position, ray directions (P, 3) float64, floor points (3 arrays (P,) float32) and which rays
    hit the floor; cached per resolution (read-only arrays)."""
    cam, D = camera_rays(n)
    down = D[:, 2] < -1e-9
    tf = np.where(down, (FLOOR_Z - cam[2]) / np.where(down, D[:, 2], -1.0), 0.0)
    pf = cam + tf[:, None] * D
    pf3 = tuple(np.ascontiguousarray(pf[:, j], dtype=_F) for j in range(3))
    Dg = tuple(np.ascontiguousarray(D[:, j].reshape(n, n), dtype=_F) for j in range(3))
    tfl = np.where(down, tf, 1e30).astype(_F).reshape(n, n)
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
            c = op[0] * op[0] + op[1] * op[1] + op[2] * op[2] - _F(1)
            disc = bb * bb - a * c
            t = (-bb - np.sqrt(np.maximum(disc, _F(0)))) / a
            return t, (disc > 0) & (t > _EPS) & (t < best)
        tmin = tmax = None
        for j in range(3):
            inv = _F(1) / dp[j]
            t1 = (_F(-1) - op[j]) * inv
            t2 = (_F(1) - op[j]) * inv
            lo, hi = np.minimum(t1, t2), np.maximum(t1, t2)
            tmin = lo if tmin is None else np.maximum(tmin, lo)
            tmax = hi if tmax is None else np.minimum(tmax, hi)
        return tmin, (tmin <= tmax) & (tmin > _EPS) & (tmin < best)


def _intersect(shape: Shape, o: list, d: list, t_init) -> tuple[np.ndarray, np.ndarray]:
    """Nearest hit of rays o + t d (object frame; o and d are lists of 3 broadcastable float32 arrays)
    with the shape's parts, for eps < t < t_init. Returns (t, part index; -1 where no hit)."""
    G = _part_frames(shape).astype(_F)
    C = shape.center.astype(_F)
    shp = np.broadcast_shapes(*(x.shape for x in o), *(x.shape for x in d))
    best = np.broadcast_to(np.asarray(t_init, _F), shp).copy()
    idx = np.full(shp, -1, np.int8)
    for k in range(len(shape.kind)):
        e = [o[i] - C[k, i] for i in range(3)]
        op = [e[0] * G[k, 0, j] + e[1] * G[k, 1, j] + e[2] * G[k, 2, j] for j in range(3)]
        dp = [d[0] * G[k, 0, j] + d[1] * G[k, 1, j] + d[2] * G[k, 2, j] for j in range(3)]
        t, hit = _hit_part(int(shape.kind[k]), op, dp, best)
        np.copyto(best, t, where=hit)
        idx[hit] = k
    return best, idx


def _primary_hits(shape: Shape, R: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Nearest object hit of every camera ray in every view: (t (V, n, n) float32 up to the floor's t,
    part index (V, n, n) int8, -1 where the ray sees the floor). Each part is only tested on the pixel
    rectangle its bounding box projects to in that view."""
    cam, _, _, _, Dg, tfl = _camera_setup(n)
    _, fwd, right, up = _camera()
    V, K = len(R), len(shape.kind)
    G = _part_frames(shape)  # (K, 3, 3)
    # composite maps world direction -> part unit space, and the camera in part unit space, per (v, k)
    W = (R[:, None, :, :, None] * G[None, :, None, :, :]).sum(axis=3)  # (V, K, 3, 3) = R_v @ G_k
    cam_obj = (R * cam[None, :, None]).sum(axis=1)  # (V, 3) = R_v^T cam
    e = cam_obj[:, None, :] - shape.center[None]  # (V, K, 3)
    OP = (e[..., :, None] * G[None]).sum(axis=-2)  # (V, K, 3)
    # projected bounding boxes: corners of each part's oriented box, in world, then in pixels
    local = (_CORNERS[None] * shape.axes[:, None, :])[..., None, :]  # (K, 8, 1, 3)
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
    Wf, OPf = W.astype(_F), OP.astype(_F)
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


def _normals(shape: Shape, idx: np.ndarray, p: list) -> list:
    """Unit object-frame normals at hit points p (list of 3 arrays) on parts idx (>= 0)."""
    G = _part_frames(shape).astype(_F)
    R = shape.rot.astype(_F)
    C = shape.center.astype(_F)
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
    inv = _F(1) / np.sqrt(n[0] * n[0] + n[1] * n[1] + n[2] * n[2] + _F(1e-20))
    return [x * inv for x in n]


def _lights(latents: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per view: light position (world, float64 (V, 3)), light colour (linear (V, 3)), floor albedo."""
    th, ph = latents[:, 4].astype(np.float64), latents[:, 5].astype(np.float64)
    ldir = np.stack([np.sin(th) * np.cos(ph), np.sin(th) * np.sin(ph), np.cos(th)], axis=1)
    lcol = _to_linear(hsv_to_rgb(HUE_ARC * latents[:, 6], LIGHT_SATURATION, 1.0))
    floor = _to_linear(hsv_to_rgb(HUE_ARC * latents[:, 3], FLOOR_SATURATION, FLOOR_VALUE))
    return LIGHT_DISTANCE * ldir, lcol, floor


def _render_chunk(shape: Shape, latents: np.ndarray, n: int) -> np.ndarray:
    """Linear-light images (V, n*n, 3) float32 at the (supersampled) resolution n."""
    V = len(latents)
    cam, D, pf, floor_ok, _, _ = _camera_setup(n)
    P = n * n
    R = euler_xyz_to_matrix(latents[:, :3].astype(np.float64))  # (V, 3, 3) object -> world
    Lpos, lcol, falb = _lights(latents)
    amb = (AMBIENT * (0.5 + 0.5 * lcol)).astype(_F)  # (V, 3)
    dif = (DIFFUSE * lcol).astype(_F)

    # floor: the same points in every view (camera and floor are fixed); point light per view
    L = Lpos.astype(_F)
    lv = [L[:, j, None] - pf[j][None, :] for j in range(3)]  # (V, P) each, floor point -> light
    a = lv[0] * lv[0] + lv[1] * lv[1] + lv[2] * lv[2]
    lam_f = np.maximum(lv[2], _F(0)) / np.sqrt(a)  # floor normal is +z
    # shadow rays pf -> light (t in (0, 1)): only those through the bounding sphere can be blocked
    pp = pf[0] * pf[0] + pf[1] * pf[1] + pf[2] * pf[2]
    bb = lv[0] * pf[0] + lv[1] * pf[1] + lv[2] * pf[2]
    c = pp - _F(shape.bound**2)
    disc = bb * bb - a * c
    sq = np.sqrt(np.maximum(disc, _F(0)))
    cand = (disc > 0) & (sq > bb) & ((-bb - sq) < a) & floor_ok
    vi, pi = np.nonzero(cand)
    if len(vi):
        Rt = R.astype(_F)[vi]  # world -> object frame is R^T: x_obj_j = sum_i R[i, j] x_i
        po = [pf[j][pi] for j in range(3)]
        dw = [lv[j][vi, pi] for j in range(3)]
        o = [Rt[:, 0, j] * po[0] + Rt[:, 1, j] * po[1] + Rt[:, 2, j] * po[2] for j in range(3)]
        d = [Rt[:, 0, j] * dw[0] + Rt[:, 1, j] * dw[1] + Rt[:, 2, j] * dw[2] for j in range(3)]
        _, hit = _intersect(shape, o, d, _F(1))
        lam_f[vi[hit >= 0], pi[hit >= 0]] *= _F(1.0 - SHADOW_DARKNESS)
    img = np.empty((V, P, 3), _F)
    fa = falb.astype(_F)
    for ch in range(3):
        img[..., ch] = (fa[:, ch, None] * amb[:, ch, None]) + (fa[:, ch, None] * dif[:, ch, None]) * lam_f
    img[:, ~floor_ok] = 0.0  # sky (never visible with the default camera)

    # object: nearest part hit per pixel, in front of the floor
    t, idx = _primary_hits(shape, R, n)
    vh, ph = np.nonzero(idx.reshape(V, P) >= 0)
    if len(vh):
        k = idx.reshape(V, P)[vh, ph].astype(np.int64)
        th = t.reshape(V, P)[vh, ph]
        pw = cam + th[:, None].astype(np.float64) * D[ph]  # world hit points (N, 3)
        Rv = R[vh]
        p = [(Rv[:, 0, j] * pw[:, 0] + Rv[:, 1, j] * pw[:, 1] + Rv[:, 2, j] * pw[:, 2]).astype(_F)
             for j in range(3)]
        nrm = _normals(shape, k, p)
        # light in the object frame: R^T Lpos (the object's centre is the world origin)
        lo = (R * Lpos[:, :, None]).sum(axis=1).astype(_F)[vh]  # (N, 3)
        lv_o = [lo[:, j] - p[j] for j in range(3)]
        inv = _F(1) / np.sqrt(lv_o[0] * lv_o[0] + lv_o[1] * lv_o[1] + lv_o[2] * lv_o[2])
        lam = np.maximum((nrm[0] * lv_o[0] + nrm[1] * lv_o[1] + nrm[2] * lv_o[2]) * inv, _F(0))
        alb = shape.albedo.astype(_F)[k]
        img[vh, ph] = alb * (amb[vh] + dif[vh] * lam[:, None])
    return img


def render_shape(
    shape: Shape, latents: np.ndarray, resolution: int, supersample: int = SUPERSAMPLE
) -> np.ndarray:
    """Render `shape` under each view's latents: (V, H, W, 3) uint8."""
    latents = np.asarray(latents)
    if latents.ndim != 2 or latents.shape[1] != LATENT_DIM:
        raise ValueError(f"latents must have shape (V, 7), got {latents.shape}")
    res = int(resolution)
    if res < 1:
        raise ValueError(f"resolution must be >= 1, got {resolution}")
    s = max(1, int(supersample))
    n = res * s
    V = len(latents)
    out = np.empty((V, res, res, 3), np.uint8)
    chunk = max(1, 300_000 // (n * n))  # views per chunk: keeps the working set near a few MB per array
    for a in range(0, V, chunk):
        lin = _render_chunk(shape, latents[a : a + chunk], n).reshape(-1, n, n, 3)
        if s > 1:  # box filter: sum of the s*s sub-sample grids
            acc = np.zeros((len(lin), res, res, 3), _F)
            for i in range(s):
                for j in range(s):
                    acc += lin[:, i::s, j::s]
            lin = acc * _F(1.0 / (s * s))
        enc = np.power(np.clip(lin, _F(0), _F(1)), _F(1 / GAMMA))
        out[a : a + chunk] = np.rint(enc * _F(255)).astype(np.uint8)
    return out


def render_views(class_idx: int, rng: np.random.Generator, latents: np.ndarray, resolution: int) -> np.ndarray:
    """Draw an object of family `class_idx` from rng, then render it in every view: (V, H, W, 3) uint8."""
    shape = make_shape(class_idx, rng)
    return render_shape(shape, latents, resolution)


def render_object(
    dataset_seed: int, class_idx: int, obj_idx: int, n_views: int, resolution: int
) -> tuple[np.ndarray, np.ndarray]:
    """(images (V, H, W, 3) uint8, latents (V, 7) float32) of one object, from its seed alone.

    The object's shape does not depend on n_views or resolution, and view i's latents do not depend on
    n_views (shape and latents use separate child seeds)."""
    shape_ss, lat_ss = object_seed(dataset_seed, class_idx, obj_idx).spawn(2)
    latents = sample_latents(np.random.default_rng(lat_ss), n_views)
    images = render_views(class_idx, np.random.default_rng(shape_ss), latents, resolution)
    return images, latents

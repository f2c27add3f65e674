"""The object families of the synthetic renderer (data/render.py): each class is a fixed arrangement of 4-7 parts
(ellipsoids and boxes) with a light body colour and off-axis accents in distinct colours, jittered per object."""

from __future__ import annotations

import numpy as np

from ctxssl_cli.data.render_geometry import BOX, CORNERS, ELLIPSOID, Shape
from ctxssl_cli.data.render_shading import to_linear
from ctxssl_cli.data.rotations import euler_xyz_to_matrix

OBJECT_RADIUS = 0.8  # every object is scaled to this bounding radius about its centre

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
        albedo.append(to_linear(np.clip(base, 0.02, 0.98)))
    kind = np.array(kinds, np.int64)
    center, ax, rot = np.array(centers), np.array(axes), np.array(rots)
    # surface samples (exact corners for boxes) -> centre (AABB midpoint) and radius
    pts = []
    for k in range(len(kind)):
        unit = CORNERS if kind[k] == BOX else _SPHERE
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

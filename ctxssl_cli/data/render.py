"""The built-in synthetic 3D benchmark: procedural objects rendered with 3DIEBench's latent semantics.

Pure numpy, no I/O, no OpenGL. SPEC §3.1/§3.2. This module samples the latents and seeds and is the entry point
(`render_object`); the parts live in render_shapes.py (object families), render_geometry.py (camera, ray
casting) and render_shading.py (colours, light, floor, shadow).

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

import numpy as np

from ctxssl_cli.data.render_geometry import FLOAT, Shape, camera_rays  # noqa: F401 (re-exported)
from ctxssl_cli.data.render_shading import GAMMA, HUE_ARC, hsv_to_rgb, render_chunk  # noqa: F401 (re-exported)
from ctxssl_cli.data.render_shapes import CLASS_NAMES, OBJECT_RADIUS, make_shape  # noqa: F401 (re-exported)
from ctxssl_cli.data.rotations import LATENT_DIM, LATENT_RANGES

RENDER_VERSION = 2  # bump when the images for a given (seed, class, object, view) change; 2: the hue arc
SUPERSAMPLE = 2  # rays per pixel side, box-filtered down (antialiasing; the cost grows with its square)


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
        lin = render_chunk(shape, latents[a : a + chunk], n).reshape(-1, n, n, 3)
        if s > 1:  # box filter: sum of the s*s sub-sample grids
            acc = np.zeros((len(lin), res, res, 3), FLOAT)
            for i in range(s):
                for j in range(s):
                    acc += lin[:, i::s, j::s]
            lin = acc * FLOAT(1.0 / (s * s))
        enc = np.power(np.clip(lin, FLOAT(0), FLOAT(1)), FLOAT(1 / GAMMA))
        out[a : a + chunk] = np.rint(enc * FLOAT(255)).astype(np.uint8)
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

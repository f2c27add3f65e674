"""Actions and per-view factor values by action schema (data/schema.py): the one dispatch that evaluation uses to
turn two views' latents into the action between them, whatever the dataset.

A view's latent row is what the split object stores per view: for `views3d`, the 7 stored values (rotation x, y,
z, floor hue, light theta, light phi, light hue; data/rotations.py); for `augment2d`, the 9 parameters of the view
that the evaluation drew (data/virtual_views.py; ViewParams layout, data/augment2d.py). numpy in, numpy out.
"""

from __future__ import annotations

import numpy as np

from ctxssl_cli.data.schema import AUGMENT2D, VIEWS3D, ActionSchema
from ctxssl_cli.errors import CtxsslError


def relative_action_for(schema: ActionSchema, lat_a: np.ndarray, lat_b: np.ndarray,
                        canonical: bool = True) -> np.ndarray:
    """The action mapping view a to view b, (..., L) latents -> (..., schema.dim) float32.

    views3d: data.rotations.relative_action (relative quaternion, sign canonical or scipy's, then the two hue
    differences). augment2d: data.augment2d.relative_action (parameter differences, log factors, hue wrapped);
    `canonical` does not apply there."""
    if schema == VIEWS3D:
        from ctxssl_cli.data.rotations import relative_action

        return relative_action(lat_a, lat_b, canonical=canonical)
    if schema == AUGMENT2D:
        import torch

        from ctxssl_cli.data import augment2d

        a, b = np.asarray(lat_a, np.float32), np.asarray(lat_b, np.float32)
        shape = np.broadcast_shapes(a.shape, b.shape)
        a = torch.from_numpy(np.array(np.broadcast_to(a, shape)).reshape(-1, schema.dim))  # (M, 9), a copy
        b = torch.from_numpy(np.array(np.broadcast_to(b, shape)).reshape(-1, schema.dim))
        return augment2d.relative_action(a, b).numpy().astype(np.float32).reshape(shape)
    raise CtxsslError(f"no actions are defined for the {schema.name} action schema", "use a newer ctxssl")


def absolute_factors_for(schema: ActionSchema, latents: np.ndarray) -> dict[str, np.ndarray]:
    """Per-view features of each factor, continuous and wrap-free, for the variance share (metrics.variance_share):
    latents (..., L) -> {factor: (M, K) float64}, M = the number of views, factors in schema order.

    views3d: rotation -> its 3x3 matrix (9), color -> cos and sin of 2 pi x (floor hue, light hue) (4).
    augment2d: each factor's columns of the view's absolute target (augment2d.absolute_target: the parameters with
    log factors; the hue shift stays within +-0.5 turn, so it does not wrap)."""
    lat = np.asarray(latents).reshape(-1, np.asarray(latents).shape[-1])
    if schema == VIEWS3D:
        from ctxssl_cli.data.rotations import HUE_INDICES, euler_xyz_to_matrix

        lat = lat.astype(np.float64)
        ang = 2 * np.pi * lat[:, list(HUE_INDICES)]
        return {"rotation": euler_xyz_to_matrix(lat[:, 0:3]).reshape(-1, 9),
                "color": np.c_[np.cos(ang), np.sin(ang)]}
    if schema == AUGMENT2D:
        import torch

        from ctxssl_cli.data.augment2d import absolute_target

        t = absolute_target(torch.from_numpy(np.ascontiguousarray(lat, np.float32))).numpy().astype(np.float64)
        return {f: t[:, list(schema.indices(f))] for f in schema.factor_names}
    raise CtxsslError(f"no factor features are defined for the {schema.name} action schema", "use a newer ctxssl")

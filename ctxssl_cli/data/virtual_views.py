"""Evaluation views of augment2d datasets (SPEC §3.4, §4): a fixed set of augmented views per stored image, so that
`embed` and `evaluate` read a 2D dataset exactly as they read a split of stored 3D views.

An augment2d split stores one image per object. `AugmentedViews` gives every object `n_views` views whose parameters
are drawn once, from (seed, split name) and the run's augmentation settings (spec data.augment) alone: one
vectorised `augment2d.sample_params` call for all N*V views (object-major: row o*V + v is view v of object o), so
every run on a dataset with the same settings is evaluated on the same views (the settings are part of
`describe()`, hence of the embeddings' cache key and of the report; `ctxssl compare` marks runs whose views differ).
Its `latents` (N, V, 9) are those raw parameters (ViewParams layout); the actions and per-view targets are computed
from them (data/actions.py). `images(obj, view)` renders the views as uint8 like a stored split, so the model input
path (pairs.to_model_input) does not change.

Defaults: 4 views per object for every split (EVAL_VIEWS): pairs exist for the R² probes (12 ordered pairs per
object) and retrieval ranks a view among 4; more views cost encoder passes on every split (CIFAR-10's 50,000 train
images x 4 = 200,000 encodings). EVAL_VIEW_SEED fixes the draw.

`evaluation_split` is the one place that maps (schema, split name) to the split object evaluation reads.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import torch

from ctxssl_cli.data.augment2d import DEFAULT_SETTINGS, AugmentSettings, ViewParams, apply_params, sample_params
from ctxssl_cli.data.schema import AUGMENT2D, VIEWS3D, ActionSchema
from ctxssl_cli.errors import CtxsslError

EVAL_VIEWS = 4  # views per object in evaluation (see the module docstring)
EVAL_VIEW_SEED = 0xE7A12D  # the fixed draw of the evaluation views ("eval 2D")


class AugmentedViews:
    """A split-like object (the attributes embed/evaluate read from prepared.SplitData) of augmented views."""

    def __init__(self, split, n_views: int = EVAL_VIEWS, seed: int = EVAL_VIEW_SEED, out_size: int | None = None,
                 settings: AugmentSettings = DEFAULT_SETTINGS, device="cpu"):
        if isinstance(n_views, bool) or not isinstance(n_views, int) or n_views < 1:
            raise CtxsslError(f"evaluation views per object {n_views!r} is not a positive integer",
                              f"use e.g. {EVAL_VIEWS}")
        if split.n_views < 1:
            raise CtxsslError(f"split {split.name} has no stored image per object", "re-run prepare")
        self.source, self.name = split, split.name
        self.n_objects, self.n_views, self.seed = split.n_objects, int(n_views), int(seed)
        self.resolution = int(out_size if out_size is not None else split.resolution)  # the views' side
        self.settings, self.device = settings, torch.device(device)
        self.labels, self.object_ids = split.labels, split.object_ids
        state = np.random.SeedSequence([self.seed, *self.name.encode()]).generate_state(1, np.uint64)
        gen = torch.Generator().manual_seed(int(state[0]))
        params = sample_params(self.n_objects * self.n_views, gen, settings)  # (N*V, 9), object-major
        self.latents = params.numpy().reshape(self.n_objects, self.n_views, ViewParams.DIM)  # (N, V, 9) float32

    def __len__(self) -> int:
        return self.n_objects

    def describe(self) -> dict:
        """What determines the views (recorded in embeddings files and reports; part of the cache key)."""
        return {"kind": "augment2d", "views_per_object": self.n_views, "seed": self.seed,
                "out_size": self.resolution, "settings": asdict(self.settings)}

    def images(self, obj, view) -> torch.Tensor:
        """uint8 (B, 3, S, S) of views `view[b]` of objects `obj[b]`: round(apply_params(source, params) * 255),
        rendered on `device` (and returned there)."""
        obj = np.asarray(obj, np.int64).reshape(-1)
        view = np.asarray(view, np.int64).reshape(-1)
        if obj.shape != view.shape:
            raise ValueError(f"obj and view differ in length: {obj.shape} vs {view.shape}")
        if obj.size and (obj.min() < 0 or obj.max() >= self.n_objects or view.min() < 0 or view.max() >= self.n_views):
            raise IndexError(f"object/view index out of range ({self.n_objects} objects, {self.n_views} views)")
        src = self.source.images(obj, np.zeros_like(obj)).to(self.device)  # (B, 3, H, W) the stored image
        params = torch.from_numpy(self.latents[obj, view]).to(self.device)  # (B, 9)
        views = apply_params(src, params, self.resolution, self.settings)  # (B, 3, S, S) float in [0, 1]
        return views.mul_(255.0).round_().to(torch.uint8)


def evaluation_split(data, schema: ActionSchema, name: str, out_size: int, device="cpu",
                     settings: AugmentSettings = DEFAULT_SETTINGS):
    """The split object evaluation reads: views3d -> the stored views (`data.split(name)`); augment2d ->
    AugmentedViews of it at `out_size` (the run's resolution), drawn with the run's augmentation `settings`
    (spec data.augment), rendered on `device`."""
    if schema == VIEWS3D:
        return data.split(name)
    if schema == AUGMENT2D:
        return AugmentedViews(data.split(name), out_size=out_size, settings=settings, device=device)
    raise CtxsslError(f"evaluation does not know the {schema.name} action schema", "use a newer ctxssl")

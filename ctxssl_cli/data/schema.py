"""Action schemas (SPEC §2, §3.2, §3.4): the factors an action is made of, their widths and order, and which
components each environment reveals.

A prepared dataset's manifest declares its schema under `action_schema` (a manifest without one is a 3DIEBench-like
dataset of stored views). Two schemas exist:

- `views3d` (3DIEBench and the built-in synthetic benchmark): rotation (4: the relative rotation as a quaternion
  x, y, z, w) then color (2: the floor and light hue differences). A view's latent row stores 7 values (rotation
  x, y, z, floor hue, light theta, light phi, light hue), from which actions and absolute targets are computed.
- `augment2d` (CIFAR-10, image folders): views are made on the fly by a parameterised pipeline (SPEC §3.4):
  crop (4: top, left, height, width relative to the image), color (4: brightness, contrast, saturation, hue
  jitter), blur (1: Gaussian sigma).

Everything that needs the action width reads it from a schema (or from a run's recorded `action_dim`), never as a
literal. The module-level ACTION_DIM / ROTATION / COLOR / ENVIRONMENTS are the views3d schema's, kept for the code
that only handles stored views.
"""

from __future__ import annotations

from dataclasses import dataclass

from ctxssl_cli.errors import CtxsslError

INVARIANT = "invariant"


@dataclass(frozen=True)
class ActionSchema:
    name: str
    factors: tuple[tuple[str, int], ...]  # (factor, width) in the order of the action's components

    @property
    def dim(self) -> int:
        return sum(w for _, w in self.factors)

    @property
    def factor_names(self) -> tuple[str, ...]:
        return tuple(f for f, _ in self.factors)

    def indices(self, factor: str) -> tuple[int, ...]:
        """The action components of one factor."""
        lo = 0
        for f, w in self.factors:
            if f == factor:
                return tuple(range(lo, lo + w))
            lo += w
        raise CtxsslError(f"the {self.name} action schema has no factor '{factor}'",
                          f"use one of: {', '.join(self.factor_names)}")

    @property
    def environments(self) -> dict[str, tuple[int, ...]]:
        """Every environment this schema allows: one per factor, every combination of factors joined by '+'
        (in schema order, e.g. 'crop+blur'), and 'invariant' (reveals nothing). views3d also keeps its historical
        name 'rotcolor' for rotation+color."""
        names = self.factor_names
        envs: dict[str, tuple[int, ...]] = {}
        for r in range(1, len(names) + 1):
            for combo in _combinations(names, r):
                envs["+".join(combo)] = tuple(i for f in combo for i in self.indices(f))
        if self.name == VIEWS3D.name:
            envs["rotcolor"] = envs.pop("rotation+color")
        envs[INVARIANT] = ()
        return envs

    def to_manifest(self) -> dict:
        return {"name": self.name, "factors": [{"name": f, "size": w} for f, w in self.factors]}


def _combinations(items, r):
    if r == 0:
        yield ()
        return
    for i, first in enumerate(items):
        for rest in _combinations(items[i + 1:], r - 1):
            yield (first, *rest)


VIEWS3D = ActionSchema("views3d", (("rotation", 4), ("color", 2)))
AUGMENT2D = ActionSchema("augment2d", (("crop", 4), ("color", 4), ("blur", 1)))
SCHEMAS = {s.name: s for s in (VIEWS3D, AUGMENT2D)}


def schema_from_manifest(manifest: dict) -> ActionSchema:
    """The schema a prepared dataset's manifest declares (none declared: views3d, every dataset before 0.4)."""
    return schema_from_entry(manifest.get("action_schema"))


def schema_of_run(meta: dict) -> ActionSchema:
    """The schema a run was trained with, from its recorded meta (runs before 0.4 record none: views3d)."""
    return schema_from_entry(meta.get("action_schema"))


def check_same_schema(trained: ActionSchema, data: ActionSchema, run: str, data_root) -> None:
    """A run reads only data of the action schema it was trained with (a 3DIEBench run on CIFAR-10 data...)."""
    if trained != data:
        raise CtxsslError(f"{run} was trained on {trained.name} data ({', '.join(trained.factor_names)}) but "
                          f"{data_root} is a {data.name} dataset ({', '.join(data.factor_names)})",
                          "pass the dataset the run was trained on (--data), or train a run on this dataset")


def schema_from_entry(entry) -> ActionSchema:
    """An ActionSchema from its manifest / run-meta entry (`ActionSchema.to_manifest()`); None: views3d."""
    if entry is None:
        return VIEWS3D
    name = entry.get("name") if isinstance(entry, dict) else None
    if name not in SCHEMAS:
        raise CtxsslError(f"the manifest declares an unknown action schema {name!r}",
                          f"this ctxssl knows {', '.join(SCHEMAS)}; re-run prepare with a matching ctxssl")
    schema = SCHEMAS[name]
    declared = tuple((f.get("name"), f.get("size")) for f in entry.get("factors", ()))
    if declared != schema.factors:
        raise CtxsslError(f"the manifest's {name} action schema {declared} differs from this ctxssl's "
                          f"{schema.factors}", "re-run prepare with --overwrite")
    return schema


ACTION_DIM = VIEWS3D.dim  # quaternion (4) + two hue differences (2)
ROTATION = VIEWS3D.indices("rotation")
COLOR = VIEWS3D.indices("color")

# What each environment reveals of the action (SPEC §2 "Environments"). An environment hides the rest (zeroes
# it in every x token). "invariant" reveals nothing, so the model is pushed to invariance.
ENVIRONMENTS: dict[str, tuple[int, ...]] = {
    "rotation": ROTATION,
    "color": COLOR,
    "rotcolor": ROTATION + COLOR,
    INVARIANT: (),
}


def revealed_mask(env: str, action_dim: int = ACTION_DIM, device="cpu", schema: ActionSchema = VIEWS3D):
    """(A,) bool tensor: the action components environment `env` reveals (the one definition; training and
    the evaluation context modes both use it)."""
    import torch

    envs = schema.environments
    if env not in envs:
        raise CtxsslError(f"unknown environment '{env}' for the {schema.name} action schema",
                          f"use one of: {', '.join(envs)}")
    m = torch.zeros(action_dim, dtype=torch.bool, device=device)
    m[[i for i in envs[env] if i < action_dim]] = True
    return m

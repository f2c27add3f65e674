"""The R² probe of each factor of an action schema (SPEC §4, §3.4), and how reports name them. No torch, no
matplotlib: the probes (paper_probes.py), the report (report.py) and the plots (plots.py) read it.

- views3d: color -> linear, rotation -> MLP (the published probes), created in that order: ctxssl always drew the
  colour probe's initialisation first, so this order keeps every views3d result bit for bit what it was;
- augment2d: crop -> MLP, color -> linear, blur -> linear (SPEC §3.4: linear for colour and blur, MLP for crop).

A report names its schema in meta.schema (ActionSchema.to_manifest()); one without it (ctxssl before 0.4, and the
hand-made reports of tests) is views3d.
"""

from __future__ import annotations

LINEAR, MLP = "linear", "mlp"
# factor -> probe, per schema name, in creation order (not the schema's order)
PROBES: dict[str, tuple[tuple[str, str], ...]] = {
    "views3d": (("color", LINEAR), ("rotation", MLP)),
    "augment2d": (("crop", MLP), ("color", LINEAR), ("blur", LINEAR)),
}
# plot panel titles
TITLES = {
    ("views3d", "rotation"): "Rotation (relative quaternion, MLP probe)",
    ("views3d", "color"): "Color (hue differences, linear probe)",
    ("augment2d", "crop"): "Crop (box differences, MLP probe)",
    ("augment2d", "color"): "Color (jitter differences, linear probe)",
    ("augment2d", "blur"): "Blur (sigma difference, linear probe)",
}
VIEWS3D_ENTRY = {"name": "views3d", "factors": [{"name": "rotation", "size": 4}, {"name": "color", "size": 2}]}


def probes_of(schema) -> tuple[tuple[str, str], ...]:
    """(factor, probe kind) pairs of an ActionSchema, in creation order."""
    if schema.name not in PROBES:
        raise KeyError(f"no R² probes are defined for the {schema.name} action schema")
    return PROBES[schema.name]


def probe_description(schema) -> dict[str, str]:
    """{factor: "MLP 2F-1024-1024-4" or "linear 2F-2"} in schema order, for the report's settings."""
    kinds = dict(probes_of(schema))
    return {f: (f"MLP 2F-1024-1024-{w}" if kinds[f] == MLP else f"linear 2F-{w}") for f, w in schema.factors}


def report_schema(report: dict) -> dict:
    """The schema entry a report names (meta.schema), views3d when it names none or an unreadable one."""
    entry = (report.get("meta") or {}).get("schema")
    if not isinstance(entry, dict) or not isinstance(entry.get("factors"), list):
        return VIEWS3D_ENTRY
    if not all(isinstance(f, dict) and isinstance(f.get("name"), str) for f in entry["factors"]):
        return VIEWS3D_ENTRY
    return entry


def report_factors(report: dict) -> tuple[str, ...]:
    """The factor names of a report's schema, in schema order (views3d: rotation, color)."""
    return tuple(f["name"] for f in report_schema(report)["factors"])


def report_modes(report: dict) -> tuple[str, ...]:
    """The context modes of a report's schema in display order: one per factor, then none."""
    return (*report_factors(report), "none")


def factor_kind(report: dict, factor: str) -> str | None:
    """"MLP" or "linear": the probe of a factor in a report's schema (None if unknown)."""
    kinds = dict(PROBES.get(str(report_schema(report).get("name")), ()))
    return {MLP: "MLP", LINEAR: "linear"}.get(kinds.get(factor))


def factor_title(report: dict, factor: str) -> str:
    return TITLES.get((str(report_schema(report).get("name")), factor), f"{factor.capitalize()} R²")

"""The evaluation report: report.json, report.md, rich tables on the console, and the two PNG plots.

A report is a dict (SPEC §4 "Report"; floats, context lengths as strings). Its factors and modes are those of
the action schema named in meta.schema (ActionSchema.to_manifest(); none named: views3d): <factor> in rotation/color
and <mode> in rotation/color/none for views3d, <factor> in crop/color/blur and <mode> in crop/color/blur/none for
augment2d (evaluate/factors.py):

    {"r2":   {"features": {"<factor>": f, ...}, "<mode>": {"<c>": {"<factor>": f, ...}}},
     "r2_definitions": {"paper": <as r2>, "sklearn": <as r2>},   (r2 is the one meta.settings.r2 names)
     "share": {"features": {"<factor>": f, ...}, "<mode>": {"<c>": {"<factor>": f, ...}}},
     "mrr":  {"<mode>": {"<c>": {"mrr": f, "h@1": f, "h@2": f, "h@5": f, "h@10": f}}},
             (a baseline run, evaluate/baseline.py: "features" entries only, and "mrr": {"predictor": {...}} for
              EquiMod, SEN and SIE; meta.method names the method)
     "top1": {"features": f, "<mode>": {"<c>": f}},
     "knn":  {"features": f, "<mode>": {"<c>": f}},
     "meta": {"schema": {"name": ..., "factors": [{"name": ..., "size": ...}, ...]}, "checkpoint": ..., "data": ...,
              "context": {"label": "...", "kind": "default" or "file", ...}, "settings": ..., "timings": ...}}

Files: report.json, report.md, r2_vs_context.png (one panel per factor) and mrr_vs_context.png, whatever the schema.
The paper's 3DIEBench anchors close report.md of views3d reports only.

Any section, mode or length may be missing: every writer here shows what is there and marks the rest "—".
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass
from pathlib import Path

from ctxssl_cli.evaluate.factors import VIEWS3D_ENTRY, factor_kind, report_factors, report_modes, report_schema
from ctxssl_cli.evaluate.plots import (LEAF_ROWS, MODES, plot_mrr_vs_context, plot_r2_vs_context, section_modes,
                                       sorted_lengths)
from ctxssl_cli.fileio import atomic_write_text

SECTIONS = ("r2", "share", "mrr", "top1", "knn")
R2_NAMES = {"paper": "one global target mean, as published", "sklearn": "per-dimension means"}
MRR_COLUMNS = ("mrr", "h@1", "h@2", "h@5", "h@10")
REPORT_FILES = ("report.json", "report.md", "r2_vs_context.png", "mrr_vs_context.png")

# SPEC §5: the paper's 3DIEBench numbers (ResNet-18), shown for reference beside ours, never computed here.
PAPER_METHODS = (  # method, rotation R², color R², top-1 (%)
    ("SimCLR", 0.506, 0.148, 85.3),
    ("VICReg", 0.371, 0.023, 76.3),
    ("EquiMOD", 0.512, 0.097, 82.4),
    ("SIE", 0.671, 0.011, 77.3),
    ("SEN", 0.633, 0.055, 81.5),
    ("ContextSSL, rotation context (c=126)", 0.744, 0.023, 80.4),
    ("ContextSSL, color context (c=126)", 0.344, 0.986, 80.4),
)
PAPER_RETRIEVAL = {  # ContextSSL, rotation context, by context length: (MRR, H@1, H@5)
    "0": (0.240, 0.108, 0.366), "2": (0.270, 0.129, 0.412), "14": (0.373, 0.223, 0.541),
    "30": (0.396, 0.245, 0.561), "126": (0.402, 0.292, 0.568),
}


@dataclass
class Table:
    title: str
    columns: list[str]  # the first names the row label
    rows: list[list[str]]


def _fmt(v) -> str:
    """3 decimals; missing or non-finite -> an em dash."""
    if not isinstance(v, numbers.Real) or isinstance(v, bool) or not math.isfinite(v):
        return "—"
    return f"{float(v):.3f}"


def _rows(section: dict, cell, order=MODES) -> list[list[str]]:
    """One row per entry: "features" (and a baseline's "predictor") first, then mode@c in mode order (`order`:
    the report's schema's modes) and numeric length order."""
    rows = [[leaf, *cell(section[leaf])] for leaf in LEAF_ROWS if leaf in section]
    for mode in section_modes(section, order):
        for c in sorted_lengths(section[mode]):
            rows.append([f"{mode}@{c}", *cell(section[mode][c])])
    return rows


def _factor_cells(entry, factors=("rotation", "color")) -> list[str]:
    """The cells of an R² or variance-share entry, one per factor (views3d: rotation, color)."""
    return [_fmt((entry or {}).get(f)) for f in factors]


def result_tables(report: dict) -> list[Table]:
    """The results as tables, one per section present (shared by the Markdown and the console output)."""
    tables = []
    settings = (report.get("meta") or {}).get("settings") or {}
    factors, order = report_factors(report), report_modes(report)
    cells = lambda e: _factor_cells(e, factors)  # noqa: E731
    r2_columns = [f"{f} R²" + (f" ({kind})" if (kind := factor_kind(report, f)) else "") for f in factors]
    if report.get("r2"):
        r2_kind = settings.get("r2", settings.get("r2_kind", "sklearn"))
        protocol = settings.get("probes", "fast (ctxssl <= 0.2)")
        by_definition = report.get("r2_definitions") or {r2_kind: report["r2"]}
        for kind in [r2_kind] + sorted(k for k in by_definition if k != r2_kind):
            what = R2_NAMES.get(kind, kind)
            tables.append(Table(f"Equivariance: R² of a probe on concat(e(x), e(y)), val pairs ({protocol} probes, "
                                f"{kind} R²: {what})", ["embedding", *r2_columns],
                                _rows(by_definition[kind], cells, order)))
    if report.get("share"):
        tables.append(Table("Variance share: fraction of the embedding's variance explained linearly by the factor "
                            "(val; fit on train)", ["embedding", *factors],
                            _rows(report["share"], cells, order)))
    if report.get("mrr"):
        tables.append(Table("Retrieval on val: MRR and H@k",
                            ["context", "MRR", "H@1", "H@2", "H@5", "H@10"],
                            _rows(report["mrr"], lambda e: [_fmt((e or {}).get(k)) for k in MRR_COLUMNS], order)))
    if report.get("top1"):
        tables.append(Table("Invariance: linear-probe top-1 on val (fraction)", ["embedding", "top-1"],
                            _rows(report["top1"], lambda v: [_fmt(v)], order)))
    if report.get("knn"):
        k, t = settings.get("knn_k", 200), settings.get("knn_t", 0.1)
        tables.append(Table(f"Invariance: weighted kNN top-1 on val (k={k}, t={t}; fraction)",
                            ["embedding", "top-1"], _rows(report["knn"], lambda v: [_fmt(v)], order)))
    return tables


def context_label(report: dict) -> str | None:
    """Which context produced the numbers (meta.context.label), for the Markdown and the console."""
    ctx = (report.get("meta") or {}).get("context")
    if isinstance(ctx, dict):
        return ctx.get("label") or ctx.get("source")
    return str(ctx) if ctx else None


def _md_table(columns: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _describe(name: str, value) -> str:
    """A provenance bullet; a dict (path, hash, step, ...) becomes sub-bullets."""
    if isinstance(value, dict):
        return f"- **{name}**\n" + "\n".join(f"  - {k}: {v}" for k, v in value.items())
    return f"- **{name}**: {value}"


def _paper_markdown() -> str:
    methods = [[m, f"{r:.3f}", f"{c:.3f}", f"{t:.1f}"] for m, r, c, t in PAPER_METHODS]
    retrieval = [[c, *(f"{v:.3f}" for v in vals)] for c, vals in PAPER_RETRIEVAL.items()]
    return "\n\n".join([
        "## Reference: the paper's 3DIEBench numbers",
        "Gupta et al., *In-Context Symmetries*, NeurIPS 2024, ResNet-18 on 3DIEBench (SPEC §5). Quoted for "
        "comparison, not computed here; they apply to 3DIEBench only (not to the synthetic benchmark). Top-1 "
        "is in percent there, a fraction above.",
        _md_table(["method", "rotation R²", "color R²", "top-1 (%)"], methods),
        "ContextSSL with rotation context, by context length (EquiMOD MRR 0.16, SEN 0.17):",
        _md_table(["context length", "MRR", "H@1", "H@5"], retrieval),
        "Rotation R² with color context falls from ~0.73 (c=0) to ~0.34 (c=126); color R² with rotation context "
        "from ~0.9 to ~0.05. Newer anchors (rotation R² / top-1): seq-JEPA 0.71 / 87.4 (sklearn R²), EquiCaps "
        "0.78 / 83.2. Published R² values mix two definitions: one global target mean (the published probe "
        "code, the headline here) and per-dimension means (scikit-learn; both are reported above); for "
        "the same predictions the global-mean one is never lower.",
    ])


def build_markdown(report: dict) -> str:
    """report.md: provenance, one table per result section (3 decimals), timings, settings, paper anchors."""
    meta = report.get("meta") or {}
    parts = ["# ctxssl evaluation report"]
    info = [_describe(k, meta[k]) for k in ("method", "checkpoint", "data") if meta.get(k) is not None]
    schema = report_schema(report)
    if schema.get("name") != VIEWS3D_ENTRY["name"]:  # views3d reports read as they always did
        info.append(f"- **action schema**: {schema.get('name')} ("
                    + ", ".join(f"{f['name']} {f.get('size', '?')}" for f in schema["factors"]) + ")")
    if context_label(report):
        info.append(f"- **context**: {context_label(report)}")
    r2_def = (meta.get("settings") or {}).get("r2_definition")
    if r2_def:
        info.append(f"- **R² definition**: {r2_def}")
    if info:
        parts.append("\n".join(info))
    tables = result_tables(report)
    for t in tables:
        parts.append(f"## {t.title}\n\n{_md_table(t.columns, t.rows)}")
    if not tables:
        parts.append("_No results in this report._")
    timings = meta.get("timings") or {}
    if timings:
        rows = [[k, f"{v:.2f}" if isinstance(v, (int, float)) else str(v)] for k, v in timings.items()]
        parts.append("## Timings\n\n" + _md_table(["step", "seconds"], rows))
    if meta.get("settings"):
        parts.append("## Settings\n\n```json\n" + json.dumps(_jsonable(meta["settings"]), indent=2) + "\n```")
    if report_schema(report).get("name") == VIEWS3D_ENTRY["name"]:  # 3DIEBench anchors mean nothing for 2D data
        parts.append(_paper_markdown())
    return "\n\n".join(parts) + "\n"


def _jsonable(x):
    """Plain JSON types: numpy/torch values and tuples become numbers/lists, keys strings, other objects
    (paths) strings, and non-finite floats null (JSON has no NaN)."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if x is None or isinstance(x, (str, bool, int)):
        return x
    if hasattr(x, "tolist"):  # numpy scalars and arrays, torch tensors
        return _jsonable(x.tolist())
    return str(x)


def write_report(report: dict, out_dir: Path) -> list[Path]:
    """Write report.json (every section key present, partial ones as they are), report.md,
    r2_vs_context.png and mrr_vs_context.png into `out_dir`, each atomically (temp file + os.replace).
    Returns the four paths in that order."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = _jsonable({**{k: {} for k in (*SECTIONS, "meta")}, **report})
    paths = [out_dir / name for name in REPORT_FILES]
    atomic_write_text(paths[0], json.dumps(data, indent=2, allow_nan=False) + "\n")
    atomic_write_text(paths[1], build_markdown(data))
    plot_r2_vs_context(data, paths[2])
    plot_mrr_vs_context(data, paths[3])
    return paths


def print_tables(report: dict, console) -> None:
    """The result tables as rich tables on `console` (results go to stdout: pass the stdout console)."""
    from rich.table import Table as RichTable
    from rich.text import Text

    tables = result_tables(report)
    if context_label(report):
        console.print(Text(f"context: {context_label(report)}"), soft_wrap=True)
    if not tables:
        console.print("no results in this report")
    for t in tables:
        console.print(Text(t.title, style="bold"))  # above, not as the table title: that wraps to its width
        rt = RichTable()
        rt.add_column(t.columns[0], style="bold")
        for c in t.columns[1:]:
            rt.add_column(c, justify="right")
        for r in t.rows:
            rt.add_row(*r)
        console.print(rt)

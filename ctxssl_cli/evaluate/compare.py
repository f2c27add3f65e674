"""`ctxssl compare`: several evaluated runs side by side, the paper's Table 1 analogue (SPEC §5, §7).

One row per baseline run (R² of the relative rotation and of the colour, linear top-1, all on the encoder
features h, and the predictor's MRR where there is one) and two rows per ContextSSL run, as Table 1 has them:
its rotation-context and colour-context outputs at the largest context length evaluated (R² and MRR of z there;
top-1 on h, the representation the baselines are scored on, so that column compares like with like). The
paper's numbers follow as reference rows (report.py PAPER_METHODS; MRR from SPEC §5): they are 3DIEBench's,
quoted, never computed here.

A comparison is only meaningful on one dataset and one protocol: runs whose reports name another data manifest
(meta.data.manifest_sha256) or other probe settings (PROTOCOL_KEYS of meta.settings) than the first run's are
refused, unless `allow_mixed`, which keeps them and marks their rows.
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ctxssl_cli.errors import CtxsslError
from ctxssl_cli.evaluate.factors import VIEWS3D_ENTRY, report_schema
from ctxssl_cli.evaluate.report import PAPER_METHODS, PAPER_RETRIEVAL, _fmt, _jsonable, _md_table
from ctxssl_cli.fileio import atomic_write_text
from ctxssl_cli.spec import METHOD_TITLES

REPORT_NAME = "report.json"
COMPARE_FILES = ("compare.md", "compare.json", "compare.png")
# The settings of meta.settings that change the numbers: two reports agreeing on all of them used one protocol.
PROTOCOL_KEYS = ("probes", "probe_epochs", "r2", "pairs_per_object", "pair_seed", "train_views_per_object",
                 "knn_k", "knn_t", "classification_probe")
METRICS = ("rotation", "color", "top1", "mrr")
METRIC_NAMES = {"rotation": "rotation R²", "color": "colour R²", "top1": "top-1", "mrr": "MRR"}
# SPEC §5: MRR of the paper's Table 1 methods where it reports one (ContextSSL: rotation context, c = 126).
PAPER_MRR = {"EquiMOD": 0.16, "SEN": 0.17, "ContextSSL, rotation context (c=126)": PAPER_RETRIEVAL["126"][0]}


@dataclass
class Row:
    label: str  # what the table's first column shows
    method: str  # contextssl, simclr, ... (the paper's rows too)
    source: str  # "run" or "paper"
    rotation: float | None = None
    color: float | None = None
    top1: float | None = None  # a fraction (the paper's percent / 100)
    mrr: float | None = None
    context: str | None = None  # ContextSSL rows: "rotation@126"
    run: str | None = None  # the run folder
    marks: list[str] = field(default_factory=list)  # with allow_mixed: "other dataset", "other protocol"


@dataclass
class Comparison:
    rows: list[Row]  # the runs' rows, in the order given, then the paper's
    r2: str  # the R² definition of the runs' numbers
    dataset: str | None  # the first run's data manifest sha256
    protocol: dict
    mixed: bool
    reports: list[str]

    def to_dict(self) -> dict:
        return _jsonable({"columns": [METRIC_NAMES[m] for m in METRICS], "r2": self.r2, "dataset": self.dataset,
                          "protocol": self.protocol, "mixed": self.mixed, "reports": self.reports,
                          "rows": [asdict(r) for r in self.rows]})


def find_report(path: Path) -> Path:
    """A run folder (its eval/report.json), a report folder or a report.json -> the report file."""
    path = Path(path)
    for cand in (path, path / REPORT_NAME, path / "eval" / REPORT_NAME):
        if cand.is_file() and cand.name == REPORT_NAME:
            return cand
    if not path.exists():
        raise CtxsslError(f"{path} does not exist", "pass run folders (or their report.json) to `ctxssl compare`")
    run = path.parent if path.name == "eval" else path
    raise CtxsslError(f"{path} has no evaluation report (no {REPORT_NAME} in it or in its eval/ folder)",
                      f"make it with `ctxssl evaluate --checkpoint {run}` (it writes {run / 'eval' / REPORT_NAME})")


def load_report(path: Path) -> tuple[Path, dict]:
    report_path = find_report(path)
    try:
        report = json.loads(report_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CtxsslError(f"{report_path} is not a readable report ({e})",
                          "evaluate the run again with `ctxssl evaluate`") from None
    if not isinstance(report, dict) or not isinstance(report.get("meta"), dict):
        raise CtxsslError(f"{report_path} is not a ctxssl evaluation report (no meta block)",
                          "evaluate the run again with `ctxssl evaluate`")
    schema = report_schema(report).get("name")
    if schema != VIEWS3D_ENTRY["name"]:  # the table's columns are 3DIEBench's factors
        raise CtxsslError(f"{report_path} reports a run on {schema} data; `ctxssl compare` tabulates 3D-view runs "
                          "(rotation and colour R², beside the paper's 3DIEBench numbers) only",
                          f"read {report_path.with_name('report.md')} for that run's per-factor results")
    return report_path, report


def _num(v) -> float | None:
    ok = isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
    return float(v) if ok else None


def method_of(report: dict) -> str:
    """The method of a report: baselines record it (evaluate/baseline.py); ContextSSL's reports do not."""
    return str((report["meta"].get("checkpoint") or {}).get("method") or "contextssl")


def protocol_of(report: dict) -> dict:
    settings = report["meta"].get("settings") or {}
    proto = {k: settings.get(k) for k in PROTOCOL_KEYS}
    proto["probes"] = proto["probes"] or "fast (ctxssl <= 0.2)"  # as report.py reads reports without the key
    proto["r2"] = proto["r2"] or settings.get("r2_kind") or "sklearn"
    views = (report["meta"].get("data") or {}).get("virtual_views")
    if views:  # 2D data: the evaluation views follow each run's augmentation settings (spec data.augment)
        proto["views"] = views
    return proto


def _largest(section: dict) -> str | None:
    lengths = [c for c in section if str(c).isdigit()] if isinstance(section, dict) else []
    return max(lengths, key=int) if lengths else None


def run_rows(report: dict, label: str, run: str) -> list[Row]:
    """The rows of one evaluated run: one for a baseline, two (rotation and colour context) for ContextSSL."""
    method = method_of(report)
    r2, top1, mrr = report.get("r2") or {}, report.get("top1") or {}, report.get("mrr") or {}
    title = METHOD_TITLES.get(method, method)
    if method != "contextssl":
        feats = r2.get("features") or {}
        return [Row(f"{label} ({title})", method, "run", _num(feats.get("rotation")), _num(feats.get("color")),
                    _num(top1.get("features")), _num((mrr.get("predictor") or {}).get("mrr")), run=run)]
    rows = []
    for mode in ("rotation", "color"):
        c = _largest(r2.get(mode))
        cell = (r2.get(mode) or {}).get(c) or {}
        ranks = ((mrr.get(mode) or {}).get(c) or {}) if c is not None else {}
        rows.append(Row(f"{label} ({title}, {mode} context, c={c if c is not None else '—'})", method, "run",
                        _num(cell.get("rotation")), _num(cell.get("color")), _num(top1.get("features")),
                        _num(ranks.get("mrr")), context=f"{mode}@{c}" if c is not None else None, run=run))
    return rows


def paper_rows() -> list[Row]:
    """The paper's Table 1 (3DIEBench, ResNet-18; SPEC §5) as reference rows."""
    by_title = {v: k for k, v in METHOD_TITLES.items()}
    return [Row(f"paper: {name}", by_title.get(name.split(",")[0], name), "paper", rot, col, top1 / 100,
                PAPER_MRR.get(name)) for name, rot, col, top1 in PAPER_METHODS]


def compare_runs(paths: list[Path], allow_mixed: bool = False) -> Comparison:
    """Load every run's report, check that they are comparable, and build the rows."""
    if not paths:
        raise CtxsslError("no runs to compare",
                          "pass one or more run folders, e.g. ctxssl compare runs/a runs/b --out cmp")
    loaded = [(Path(p), *load_report(p)) for p in paths]
    seen: dict[Path, Path] = {}
    for p, rp, _ in loaded:
        if rp.resolve() in seen:
            raise CtxsslError(f"{p} and {seen[rp.resolve()]} are the same report ({rp})", "pass each run once")
        seen[rp.resolve()] = p
    first_path, _, first = loaded[0]
    dataset, protocol = (first["meta"].get("data") or {}).get("manifest_sha256"), protocol_of(first)
    rows, mixed = [], False
    for p, rp, report in loaded:
        marks = []
        other = (report["meta"].get("data") or {}).get("manifest_sha256")
        if other != dataset:
            marks.append("other dataset")
            if not allow_mixed:
                raise CtxsslError(f"{p} was evaluated on another dataset than {first_path} (data manifest sha256 "
                                  f"{str(other)[:12]} vs {str(dataset)[:12]})",
                                  "compare runs evaluated on one dataset, or pass --allow-mixed to show them anyway "
                                  "(their rows are marked)")
        diff = [k for k, v in protocol_of(report).items() if v != protocol[k]]
        if diff:
            marks.append("other protocol")
            if not allow_mixed:
                k = diff[0]
                raise CtxsslError(f"{p} was evaluated with another protocol than {first_path} ({', '.join(diff)} "
                                  f"differ: {k} {protocol_of(report)[k]!r} vs {protocol[k]!r})",
                                  "evaluate both with the same `ctxssl evaluate` options, or pass --allow-mixed to "
                                  "show them anyway (their rows are marked)")
        mixed = mixed or bool(marks)
        run_dir = rp.parent.parent if rp.parent.name == "eval" else rp.parent
        for row in run_rows(report, run_dir.name, str(run_dir)):
            row.marks = list(marks)
            rows.append(row)
    return Comparison(rows + paper_rows(), str(protocol["r2"]), dataset, protocol, mixed,
                      [str(rp) for _, rp, _ in loaded])


def table_rows(comp: Comparison) -> list[list[str]]:
    """The cells of the table (first column the row label; a mark in brackets when mixed)."""
    out = []
    for r in comp.rows:
        label = r.label + (f" [{', '.join(r.marks)}]" if r.marks else "")
        out.append([label, *(_fmt(getattr(r, m)) for m in METRICS)])
    return out


def build_markdown(comp: Comparison) -> str:
    rows = table_rows(comp)
    n_runs = sum(r.source == "run" for r in comp.rows)
    parts = ["# ctxssl comparison",
             "\n".join([f"- **reports**: {', '.join(comp.reports)}", f"- **dataset** (manifest sha256): {comp.dataset}",
                        f"- **R² definition**: {comp.r2} (the paper's rows: the published global-mean R²)",
                        "- **protocol**: " + ", ".join(f"{k} {v}" for k, v in comp.protocol.items()
                                                        if k != "classification_probe")]),
             "Rotation and colour R² of the published probes on view pairs; top-1 of a linear probe, as a fraction; "
             "all on the encoder features h, except ContextSSL's R² and MRR, which are its context-conditioned "
             "outputs z at the largest context evaluated (as Table 1). MRR: the predictor's (EquiMOD, SEN, SIE) or "
             "ContextSSL's retrieval on val; — where it does not apply.",
             _md_table(["run", *(METRIC_NAMES[m] for m in METRICS)], rows[:n_runs]),
             "## Reference: the paper's Table 1 (3DIEBench, ResNet-18; SPEC §5)",
             "Quoted, not computed here; they apply to 3DIEBench after 1000-2000 epochs, not to the synthetic "
             "benchmark. Top-1 is the paper's percent / 100.",
             _md_table(["method", *(METRIC_NAMES[m] for m in METRICS)], rows[n_runs:])]
    if comp.mixed:
        parts.insert(2, "**Mixed comparison** (--allow-mixed): the marked rows were evaluated on another dataset or "
                        "with another protocol than the first run; their numbers are not directly comparable.")
    return "\n\n".join(parts) + "\n"


def plot_comparison(comp: Comparison, path: Path) -> None:
    """Grouped bars, one group per metric: the runs' rows solid, the paper's rows for the same methods hatched."""
    from matplotlib.figure import Figure

    from ctxssl_cli.evaluate.plots import save_png

    runs = [r for r in comp.rows if r.source == "run"]
    methods = {r.method for r in runs}
    paper = [r for r in comp.rows if r.source == "paper" and r.method in methods]
    bars = runs + paper
    fig = Figure(figsize=(max(8.0, 3 + 0.3 * len(METRICS) * len(bars)), 4.5), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(1, len(bars))
    colour = {}  # a method's paper bars are outlined in the colour of its first run
    for i, r in enumerate(runs):
        colour.setdefault(r.method, f"C{i % 10}")
    for i, r in enumerate(bars):
        xs = [g + (i - (len(bars) - 1) / 2) * width for g in range(len(METRICS))]
        vals = [getattr(r, m) for m in METRICS]
        pts = [(x, v) for x, v in zip(xs, vals) if v is not None]
        style = ({"color": f"C{i % 10}"} if r.source == "run" else
                 {"color": "none", "edgecolor": colour[r.method], "hatch": "//"})
        if pts:
            ax.bar([x for x, _ in pts], [v for _, v in pts], width, label=r.label, **style)
    ax.set_xticks(range(len(METRICS)), [METRIC_NAMES[m] for m in METRICS])
    ax.axhline(0, color="0.3", linewidth=0.8)
    ax.set_ylim(min([0.0] + [getattr(r, m) for r in bars for m in METRICS if getattr(r, m) is not None]) - 0.05, 1.05)
    ax.set_title(f"Side by side ({comp.r2} R²; hatched: the paper's 3DIEBench numbers)")
    ax.grid(axis="y", alpha=0.3)
    if bars:
        ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    save_png(fig, path)


def write_comparison(comp: Comparison, out_dir: Path) -> list[Path]:
    """compare.md, compare.json and compare.png in `out_dir`, each written atomically."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise CtxsslError(f"--out {out_dir} is a file", "name a folder for the comparison")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CtxsslError(f"cannot make the folder {out_dir} ({e.strerror or e})", "choose another --out") from None
    paths = [out_dir / name for name in COMPARE_FILES]
    atomic_write_text(paths[0], build_markdown(comp))
    atomic_write_text(paths[1], json.dumps(comp.to_dict(), indent=2, allow_nan=False) + "\n")
    plot_comparison(comp, paths[2])
    return paths


def print_comparison(comp: Comparison, console) -> None:
    """The table on `console` (stdout): the runs, then the paper's rows in their own section."""
    from rich.table import Table as RichTable

    rt = RichTable(title=f"ctxssl compare ({comp.r2} R²; top-1 as a fraction)")
    rt.add_column("run", style="bold")
    for m in METRICS:
        rt.add_column(METRIC_NAMES[m], justify="right")
    n_runs = sum(r.source == "run" for r in comp.rows)
    for i, cells in enumerate(table_rows(comp)):
        if i == n_runs:
            rt.add_section()
        rt.add_row(*cells, style="dim" if i >= n_runs else None)
    console.print(rt)

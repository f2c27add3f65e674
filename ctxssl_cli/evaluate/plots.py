"""PNG plots of a report (SPEC §4 "Report"): R² and retrieval against context length, one curve per mode.

The R² figure has one panel per factor of the report's action schema (meta.schema; evaluate/factors.py): views3d
rotation and color (the paper's Figure 3, right), augment2d crop, color and blur, side by side in one file.

matplotlib's object API with its Agg canvas (no pyplot, no global backend or figure state), so plotting
works headless and from several threads. Partial reports plot what they hold; an empty panel says so.
"""

from __future__ import annotations

import math
import numbers
from pathlib import Path

from matplotlib.figure import Figure

from ctxssl_cli.evaluate.factors import factor_title, report_factors, report_modes
from ctxssl_cli.fileio import commit, tmp_path_for

MODES = ("rotation", "color", "none")  # SPEC §4 context modes of views3d, in display order
# Section entries that are one row each, not a context mode with lengths: the encoder features h, and a baseline's
# action-conditioned predictor (retrieval of EquiMod, SEN, SIE; evaluate/baseline.py).
LEAF_ROWS = ("features", "predictor")
_STYLE = {"rotation": ("C0", "o"), "color": ("C1", "s"), "none": ("C2", "^"), "crop": ("C3", "v"),
          "blur": ("C4", "D")}
_PANEL_WIDTH = 5  # inches per R² panel (views3d: two, 10 x 4 as always)


def section_modes(section: dict, order=MODES) -> list[str]:
    """The context modes of a report section: `order` first (the report's schema's modes, report_modes; views3d
    by default), then any others sorted; not the LEAF_ROWS."""
    others = sorted(k for k, v in section.items() if k not in order and k not in LEAF_ROWS and isinstance(v, dict))
    return [m for m in order if isinstance(section.get(m), dict)] + others


def sorted_lengths(by_length: dict) -> list[str]:
    """Context-length keys ("0", "2", "14", ...) in numeric order."""
    return sorted(by_length, key=lambda c: (int(c), c) if str(c).lstrip("-").isdigit() else (math.inf, str(c)))


def _finite(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _curves(section: dict, metric: str, order=MODES):
    """{mode: ([length, ...], [value, ...])} for the lengths where `metric` has a finite value."""
    curves = {}
    for mode in section_modes(section, order):
        pts = [(c, (section[mode][c] or {}).get(metric)) for c in sorted_lengths(section[mode])]
        pts = [(c, v) for c, v in pts if _finite(v)]
        if pts:
            curves[mode] = ([c for c, _ in pts], [v for _, v in pts])
    return curves


def _panel(ax, section: dict, metric: str, title: str, ylabel: str, baseline=None, order=MODES) -> None:
    """One panel: a curve per mode over the context lengths, evenly spaced (0, 2, 14, 30, 126 would
    crowd on a linear axis); `baseline` (the features' value) as a dashed horizontal line."""
    curves = _curves(section, metric, order)
    lengths = sorted_lengths({c: None for cs, _ in curves.values() for c in cs})
    pos = {c: i for i, c in enumerate(lengths)}
    for mode, (cs, vs) in curves.items():
        color, marker = _STYLE.get(mode, (None, "D"))
        label = f"{mode} context" + (" (actions zeroed)" if mode == "none" else "")
        ax.plot([pos[c] for c in cs], vs, marker=marker, color=color, label=label)
    if _finite(baseline):
        ax.axhline(baseline, color="0.4", linestyle="--", label="features h")
    ax.set_xticks(range(len(lengths)), lengths)  # none when there is no curve
    if not curves and not _finite(baseline):
        ax.text(0.5, 0.5, "no results", ha="center", va="center", transform=ax.transAxes, color="0.5")
    ax.set_title(title)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")


def save_png(fig: Figure, path: Path, dpi: int = 120) -> Path:
    """Write a figure as PNG atomically: render to a sibling temp file, then os.replace (every ctxssl figure)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path_for(path)
    try:
        fig.savefig(tmp, format="png", dpi=dpi)
        commit(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path



def r2_ylim(r2: dict, factors=("rotation", "color"), order=MODES) -> tuple[float, float]:
    """One y range for every R² panel, from min(0, lowest value) to 1: a gap reads at its true size, not
    magnified by an axis zoomed to the data (a 0.02 gap would otherwise fill the panel)."""
    values = [v for metric in factors for _, vs in _curves(r2, metric, order).values() for v in vs]
    values += [v for v in (r2.get("features") or {}).values() if _finite(v)]
    return min([0.0] + values) - 0.03, 1.03


def plot_r2_vs_context(report: dict, path: Path) -> None:
    """The R² of each factor of the report's schema against context length, one panel per factor (views3d:
    rotation and color, the paper's Figure 3 (right); augment2d: crop, color, blur), a curve per context mode,
    the features' R² dashed. Every panel shares one y range (`r2_ylim`)."""
    r2 = report.get("r2") or {}
    features = r2.get("features") or {}
    factors, order = report_factors(report), report_modes(report)
    fig = Figure(figsize=(_PANEL_WIDTH * len(factors), 4), layout="constrained")
    axes = fig.subplots(1, len(factors), squeeze=False)[0]
    for ax, factor in zip(axes, factors):
        _panel(ax, r2, factor, factor_title(report, factor), "R²", features.get(factor), order)
    ylim = r2_ylim(r2, factors, order)
    for ax in axes:
        ax.set_ylim(*ylim)
    settings = (report.get("meta") or {}).get("settings") or {}
    how = ", ".join(x for x in (f"{settings['probes']} probes" if settings.get("probes") else "",
                                f"{settings['r2']} R²" if settings.get("r2") else "") if x)
    fig.suptitle("Equivariance against context length" + (f" ({how})" if how else ""))
    save_png(fig, path)


def plot_mrr_vs_context(report: dict, path: Path) -> None:
    """Retrieval MRR, H@1 and H@5 on val against context length, a curve per context mode."""
    mrr = report.get("mrr") or {}
    order = report_modes(report)
    fig = Figure(figsize=(13, 4), layout="constrained")
    for ax, metric, name in zip(fig.subplots(1, 3), ("mrr", "h@1", "h@5"), ("MRR", "H@1", "H@5")):
        _panel(ax, mrr, metric, name, name, order=order)
    fig.suptitle("Retrieval against context length")
    save_png(fig, path)

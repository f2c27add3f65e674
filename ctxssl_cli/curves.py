"""Training curves from a run's metrics.jsonl: `curves.png` in every run folder (the trainer redraws it at each
checkpoint and at the end) and `ctxssl plot RUN [RUN ...]`, which overlays runs.

Panels: the loss and its terms (ContextSSL: loss, nce, aux; a baseline: its own terms), the online aux R² of
each training environment (ContextSSL only: each step logs the R² of the components its environment reveals),
the learning rate, and pairs/s, all against the optimiser step. matplotlib's object API on the Agg canvas (no
pyplot state), so it draws headless. Written atomically.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ctxssl_cli.errors import CtxsslError

CURVES_NAME = "curves.png"
METRICS_NAME = "metrics.jsonl"
_NOT_TERMS = {"step", "epoch", "env", "lr", "pairs_per_s", "aux_r2"}


def read_metrics(run_dir: Path) -> list[dict]:
    """The run's logged steps, in order; a torn last line (a run killed mid-write) is skipped."""
    path = Path(run_dir) / METRICS_NAME
    if not path.is_file():
        raise CtxsslError(f"{run_dir} has no {METRICS_NAME}", "point to a run folder written by `ctxssl pretrain`")
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
    return rows


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _series(rows: list[dict], key: str, env: str | None = None) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in rows if _finite(r.get(key)) and (env is None or r.get("env") == env)]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_runs(runs: dict[str, list[dict]], out: Path) -> Path:
    """Draw the curves of one or more runs ({label: metrics rows}) into `out` (PNG), atomically."""
    from matplotlib.figure import Figure

    from ctxssl_cli.evaluate.plots import save_png

    fig = Figure(figsize=(14, 3.6), layout="constrained")
    ax_loss, ax_r2, ax_lr, ax_rate = fig.subplots(1, 4)
    several = len(runs) > 1
    for i, (label, rows) in enumerate(runs.items()):
        colour = f"C{i % 10}"
        terms = [k for k in dict.fromkeys(k for r in rows for k in r) if k not in _NOT_TERMS]
        for j, term in enumerate(terms):
            x, y = _series(rows, term)
            style = ("-", "--", ":", "-.")[j % 4]
            ax_loss.plot(x, y, style, color=colour if several else f"C{j % 10}", lw=1,
                         label=f"{label}: {term}" if several else term)
        envs = sorted({r["env"] for r in rows if isinstance(r.get("env"), str)})
        for j, env in enumerate(envs):
            x, y = _series(rows, "aux_r2", env)
            ax_r2.plot(x, y, ("-", "--", ":", "-.")[j % 4], color=colour if several else f"C{j % 10}", lw=1,
                       label=f"{label}: {env}" if several else env)
        for ax, key in ((ax_lr, "lr"), (ax_rate, "pairs_per_s")):
            x, y = _series(rows, key)
            ax.plot(x, y, color=colour, lw=1, label=label)
    for ax, title in ((ax_loss, "loss terms"), (ax_r2, "online aux R² by environment"), (ax_lr, "learning rate"),
                      (ax_rate, "pairs/s (average since start)")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        if ax.lines:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "not logged (a baseline has no environments)" if ax is ax_r2 else "no data",
                    ha="center", va="center", transform=ax.transAxes, fontsize=8)
    if any(_finite(r.get("loss")) and r["loss"] > 0 for rows in runs.values() for r in rows):
        ax_loss.set_yscale("log")
    ax_r2.set_ylim(-0.5, 1.0)
    return save_png(fig, out, dpi=90)


def write_curves(run_dir: Path) -> Path | None:
    """RUN/curves.png from RUN/metrics.jsonl (None when nothing is logged yet)."""
    rows = read_metrics(run_dir)
    if not rows:
        return None
    return plot_runs({Path(run_dir).name: rows}, Path(run_dir) / CURVES_NAME)


def plot_command(run_dirs: list[Path], out: Path) -> Path:
    """`ctxssl plot`: the curves of every run in one figure; labels are the run folders' names."""
    if not run_dirs:
        raise CtxsslError("no run given", "pass one or more run folders, e.g. ctxssl plot runs/demo-* --out c.png")
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise CtxsslError(f"--out {out} must end in .png", f"e.g. --out {out.with_suffix('.png')}")
    if out.is_dir():
        raise CtxsslError(f"--out {out} is a folder", f"name a file in it, e.g. --out {out / 'curves.png'}")
    runs: dict[str, list[dict]] = {}
    for d in run_dirs:
        d = Path(d)
        if not d.is_dir():
            raise CtxsslError(f"run folder {d} does not exist", "pass folders written by `ctxssl pretrain`")
        label = d.name if d.name not in runs else str(d)
        rows = read_metrics(d)
        if not rows:
            raise CtxsslError(f"{d}/{METRICS_NAME} holds no logged step yet", "wait for the run to log a step")
        runs[label] = rows
    out.parent.mkdir(parents=True, exist_ok=True)
    return plot_runs(runs, out)

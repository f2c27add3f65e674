"""The report writer, Markdown, console tables and plots, for full, partial and empty reports."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from ctxssl_cli.evaluate.plots import plot_mrr_vs_context, plot_r2_vs_context, r2_ylim
from ctxssl_cli.evaluate.report import REPORT_FILES, build_markdown, print_tables, write_report

MODES = ("rotation", "color", "none")
LENGTHS = ("0", "2", "14", "30", "126")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def full_report():
    rng = np.random.default_rng(0)
    r = {"r2": {"features": {"rotation": 0.61234, "color": 0.4}}, "mrr": {}, "top1": {"features": 0.8},
         "knn": {"features": 0.7}}
    for m in MODES:
        r["r2"][m] = {c: {"rotation": float(rng.uniform()), "color": float(rng.uniform())} for c in LENGTHS}
        if m == "rotation":
            r["share"] = {m: {"30": {"rotation": 0.25, "color": 0.00712}}}
        r["mrr"][m] = {c: {k: float(rng.uniform()) for k in ("mrr", "h@1", "h@2", "h@5", "h@10")} for c in LENGTHS}
        r["top1"][m] = {"0": np.float32(0.5), "126": 0.55}  # numpy scalars must serialise too
        r["knn"][m] = {"0": 0.45, "126": 0.5}
    r["meta"] = {"checkpoint": {"path": "runs/x/ckpt.safetensors", "sha256": "ab" * 32},
                 "data": "/data/synthetic", "settings": {"r2_kind": "sklearn", "knn_k": 200, "knn_t": 0.1,
                                                        "lengths": (0, 2)},
                 "timings": {"embed_train_s": 1.5, "r2_probes_s": 3.25},
                 "extra": {"n": np.int64(3), "arr": np.arange(2), "path": Path("/x"), "inf": float("inf")}}
    return r


def partial_report():
    """One mode at two lengths, one missing metric, a NaN, no retrieval or classification at all."""
    return {"r2": {"rotation": {"14": {"rotation": 0.7, "color": float("nan")}, "2": {"rotation": 0.6}}}}


def _check_png(path):
    data = path.read_bytes()
    assert len(data) > 100 and data[:8] == PNG_MAGIC


def test_write_report_full(tmp_path):
    paths = write_report(full_report(), tmp_path / "out")
    assert [p.name for p in paths] == list(REPORT_FILES)
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(REPORT_FILES)  # no temp leftovers
    data = json.loads(paths[0].read_text())
    assert set(data) == {"r2", "share", "mrr", "top1", "knn", "meta"}  # "share" absent from the input: {}
    assert set(data["r2"]) == {"features", *MODES} and set(data["r2"]["rotation"]) == set(LENGTHS)
    assert set(data["r2"]["color"]["126"]) == {"rotation", "color"}
    assert set(data["mrr"]["none"]["30"]) == {"mrr", "h@1", "h@2", "h@5", "h@10"}
    assert isinstance(data["top1"]["features"], float) and isinstance(data["knn"]["color"]["126"], float)
    assert data["top1"]["rotation"]["0"] == pytest.approx(0.5)
    assert data["meta"]["settings"]["lengths"] == [0, 2]
    assert data["meta"]["extra"] == {"n": 3, "arr": [0, 1], "path": "/x", "inf": None}
    for p in paths[2:]:
        _check_png(p)


def test_markdown_has_every_mode_section_and_the_paper_anchors():
    md = build_markdown(full_report())
    for m in MODES:
        for c in LENGTHS:
            assert f"| {m}@{c} |" in md
    assert "| features | 0.612 | 0.400 |" in md  # 3 decimals
    assert "| rotation@30 | 0.250 | 0.007 |" in md  # the variance-share table
    for title in ("R²", "Variance share", "MRR", "linear-probe top-1", "kNN top-1"):
        assert title in md
    assert "paper's 3DIEBench numbers" in md and "| SIE | 0.671 | 0.011 | 77.3 |" in md
    assert "| 126 | 0.402 | 0.292 | 0.568 |" in md
    assert "ab" * 32 in md and "r2_probes_s" in md
    # rows in numeric length order, modes in SPEC order
    assert md.index("rotation@2 |") < md.index("rotation@14 |") < md.index("rotation@126 |")
    assert md.index("| rotation@0 |") < md.index("| color@0 |") < md.index("| none@0 |")


def test_write_report_partial(tmp_path):
    paths = write_report(partial_report(), tmp_path)
    data = json.loads(paths[0].read_text())  # strict JSON: NaN became null
    assert data["r2"]["rotation"]["14"]["color"] is None and data["mrr"] == {} and data["meta"] == {}
    md = paths[1].read_text()
    assert md.index("| rotation@2 | 0.600 | — |") < md.index("| rotation@14 | 0.700 | — |")
    assert "MRR" not in md.split("Reference")[0]  # no retrieval table without retrieval results
    for p in paths[2:]:
        _check_png(p)


def test_write_report_empty_and_overwrite(tmp_path):
    write_report({}, tmp_path)
    paths = write_report(full_report(), tmp_path)  # a second write replaces the first
    assert "rotation@126" in paths[1].read_text()
    assert "No results" in build_markdown({})


@pytest.mark.parametrize("report", [full_report(), partial_report(), {}, {"mrr": {"color": {"2": {"mrr": 0.3}}}},
                                    {"r2": {"features": {"rotation": 0.5}}}])
def test_plots_are_pngs_for_any_report(tmp_path, report):
    plot_r2_vs_context(report, tmp_path / "r2.png")
    plot_mrr_vs_context(report, tmp_path / "sub" / "mrr.png")
    _check_png(tmp_path / "r2.png")
    _check_png(tmp_path / "sub" / "mrr.png")


def test_r2_panels_share_a_range_from_zero_to_one():
    r2 = {"features": {"rotation": 0.33, "color": 0.96},
          "rotation": {"0": {"rotation": 0.41, "color": 0.95}, "126": {"rotation": 0.50, "color": 0.94}},
          "color": {"0": {"rotation": 0.41, "color": 0.95}, "126": {"rotation": 0.18, "color": 0.96}}}
    assert r2_ylim(r2) == pytest.approx((-0.03, 1.03))  # not zoomed to 0.94..0.96
    r2["color"]["126"]["rotation"] = -0.2
    assert r2_ylim(r2) == pytest.approx((-0.23, 1.03))
    assert r2_ylim({}) == pytest.approx((-0.03, 1.03))


def test_print_tables():
    buf = io.StringIO()
    print_tables(full_report(), Console(file=buf, width=140, color_system=None))
    text = buf.getvalue()
    for m in MODES:
        assert f"{m}@126" in text
    assert "0.612" in text and "MRR" in text and "kNN" in text
    buf = io.StringIO()
    print_tables({}, Console(file=buf))
    assert "no results" in buf.getvalue()

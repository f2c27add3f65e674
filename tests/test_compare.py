"""`ctxssl evaluate` on baseline runs and `ctxssl compare`: sections that apply (and only those), the Table 1
rows, the paper's reference rows, the files, and the refusals (no report, another dataset, another protocol)."""

import json
import os
import subprocess
import sys

import pytest

from ctxssl_cli.errors import CtxsslError
from ctxssl_cli.evaluate.compare import compare_runs, run_rows, write_comparison
from ctxssl_cli.evaluate.pipeline import EvalSettings, evaluate_checkpoint
from ctxssl_cli.spec import load_spec
from ctxssl_cli.train.dist import DistInfo
from ctxssl_cli.train.loop import pretrain

TINY = {"simclr": ["simclr.mlp=32-16"], "sen": ["sen.mlp=32-16"]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny baseline runs (SimCLR: no predictor; SEN: one), trained 2 steps and evaluated."""
    from ctxssl_cli.data.prepared import PreparedDataset
    from ctxssl_cli.data.synthetic import prepare_synthetic

    root = tmp_path_factory.mktemp("cmp")
    prepare_synthetic(root / "data", classes=4, objects_per_class=4, views=4, resolution=16, seed=0, workers=1,
                      progress=False)
    data = PreparedDataset(root / "data")
    out = {}
    for m, extra in TINY.items():
        spec = load_spec(f"demo/{m}", ["train.batch_size=8", "train.max_steps=2", "data.workers=0",
                                       "data.resolution=16", *extra])
        pretrain(spec, data, root / m, DistInfo())
        out[m] = evaluate_checkpoint(root / m, None, "cpu", EvalSettings(probe_epochs=3))
    return root, out


def test_a_baseline_report_holds_only_the_sections_that_apply(runs):
    root, results = runs
    for m, res in results.items():
        rep = res.report
        assert set(rep["r2"]) == {"features"} and set(rep["top1"]) == {"features"} == set(rep["knn"])
        assert set(rep["r2"]["features"]) == {"rotation", "color"}
        assert rep["meta"]["checkpoint"]["method"] == m and "context" not in rep["meta"]
        assert [p.name for p in res.files] == ["report.json", "report.md", "r2_vs_context.png", "mrr_vs_context.png"]
        on_disk = json.loads((root / m / "eval" / "report.json").read_text())
        assert on_disk["r2"] == rep["r2"]
        md = (root / m / "eval" / "report.md").read_text()
        assert "rotation@" not in md and "none@" not in md  # no context rows, none zero-filled
    simclr = results["simclr"].report
    assert "mrr" not in simclr and simclr["meta"]["settings"].get("retrieval") is None
    mrr = results["sen"].report["mrr"]
    assert set(mrr) == {"predictor"} and set(mrr["predictor"]) == {"mrr", "h@1", "h@2", "h@5", "h@10"}
    assert 0 < mrr["predictor"]["mrr"] <= 1 and mrr["predictor"]["h@10"] == 1.0  # a gallery of 3 other views
    assert "| predictor |" in (root / "sen" / "eval" / "report.md").read_text()


def test_baseline_evaluate_refuses_context_options_and_embed(runs):
    from ctxssl_cli.embed import EmbedSettings, embed_run

    root, _ = runs
    with pytest.raises(CtxsslError, match="--context-length applies to ContextSSL"):
        evaluate_checkpoint(root / "simclr", None, "cpu", EvalSettings(lengths=[0, 2], probe_epochs=3))
    with pytest.raises(CtxsslError, match="simclr run: it has no context") as e:
        embed_run(root / "simclr", None, "cpu", EmbedSettings(lengths=[0], out=root / "x.safetensors"))
    assert "ctxssl evaluate" in e.value.fix and not (root / "x.safetensors").exists()


def test_compare_two_runs_writes_one_table_with_the_paper_rows(runs, tmp_path):
    root, _ = runs
    comp = compare_runs([root / "simclr", root / "sen" / "eval"])  # a run folder or its report folder
    ours = [r for r in comp.rows if r.source == "run"]
    assert [r.method for r in ours] == ["simclr", "sen"] and ours[0].mrr is None and ours[1].mrr is not None
    assert ours[0].rotation is not None and ours[0].top1 is not None
    paper = [r for r in comp.rows if r.source == "paper"]
    assert len(paper) == 7 and paper[0].label == "paper: SimCLR" and paper[0].top1 == pytest.approx(0.853)
    assert not comp.mixed
    files = write_comparison(comp, tmp_path / "cmp")
    assert [f.name for f in files] == ["compare.md", "compare.json", "compare.png"]
    md = files[0].read_text()
    assert "simclr (SimCLR)" in md and "paper: SEN" in md and "Reference" in md
    js = json.loads(files[1].read_text())
    assert js["columns"] == ["rotation R²", "colour R²", "top-1", "MRR"] and len(js["rows"]) == 9
    assert files[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _contextssl_report(base: dict) -> dict:
    """A ContextSSL-shaped report on the same dataset and protocol (modes and lengths; no meta.method)."""
    cell = lambda r, c: {"rotation": r, "color": c}  # noqa: E731
    rep = {k: base[k] for k in ("meta",)}
    rep["meta"] = {**base["meta"], "checkpoint": {"name": "ctx"}}
    rep["r2"] = {"features": cell(0.5, 0.1), "rotation": {"0": cell(0.6, 0.2), "14": cell(0.7, 0.05)},
                 "color": {"0": cell(0.55, 0.5), "14": cell(0.3, 0.9)}}
    rep["top1"] = {"features": 0.8, "rotation": {"14": 0.7}}
    rep["mrr"] = {"rotation": {"14": {"mrr": 0.4}}, "color": {"14": {"mrr": 0.1}}}
    return rep


def test_a_contextssl_run_gives_the_two_table_1_rows_at_its_largest_context(runs, tmp_path):
    root, results = runs
    (tmp_path / "ctx" / "eval").mkdir(parents=True)
    (tmp_path / "ctx" / "eval" / "report.json").write_text(json.dumps(_contextssl_report(results["simclr"].report)))
    rows = run_rows(json.loads((tmp_path / "ctx" / "eval" / "report.json").read_text()), "ctx", "ctx")
    assert [(r.context, r.rotation, r.color, r.top1, r.mrr) for r in rows] == [
        ("rotation@14", 0.7, 0.05, 0.8, 0.4), ("color@14", 0.3, 0.9, 0.8, 0.1)]
    comp = compare_runs([tmp_path / "ctx", root / "simclr"])
    assert [r.method for r in comp.rows if r.source == "run"] == ["contextssl", "contextssl", "simclr"]


def test_compare_refuses_a_run_without_a_report_and_says_how_to_make_one(runs, tmp_path):
    root, _ = runs
    (tmp_path / "bare").mkdir()
    with pytest.raises(CtxsslError) as e:
        compare_runs([root / "simclr", tmp_path / "bare"])
    assert "no evaluation report" in e.value.message
    assert f"ctxssl evaluate --checkpoint {tmp_path / 'bare'}" in e.value.message
    with pytest.raises(CtxsslError, match="does not exist"):
        compare_runs([tmp_path / "nothing"])
    with pytest.raises(CtxsslError, match="same report"):
        compare_runs([root / "simclr", root / "simclr" / "eval" / "report.json"])


@pytest.mark.parametrize("edit, words", [
    (lambda r: r["meta"]["data"].update(manifest_sha256="ff" * 32), "another dataset"),
    (lambda r: r["meta"]["settings"].update(probe_epochs=300), "another protocol"),
    (lambda r: r["meta"]["settings"].update(r2="sklearn"), "another protocol"),
], ids=["dataset", "probe-epochs", "r2-definition"])
def test_compare_refuses_mixed_datasets_or_protocols_unless_allowed(runs, tmp_path, edit, words):
    root, results = runs
    other = json.loads(json.dumps(results["sen"].report))
    edit(other)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "report.json").write_text(json.dumps(other))
    with pytest.raises(CtxsslError) as e:
        compare_runs([root / "simclr", tmp_path / "other"])
    assert words in e.value.message and "--allow-mixed" in e.value.message
    comp = compare_runs([root / "simclr", tmp_path / "other"], allow_mixed=True)
    marked = [r for r in comp.rows if r.source == "run" and r.marks]
    assert comp.mixed and len(marked) == 1 and marked[0].method == "sen"
    assert "Mixed comparison" in write_comparison(comp, tmp_path / "cmp")[0].read_text()


def test_compare_command_prints_the_table_and_refuses_in_one_line(runs, tmp_path):
    root, _ = runs
    env = {**os.environ}
    env.pop("CTXSSL_DEBUG", None)
    cmd = [sys.executable, "-m", "ctxssl_cli", "compare"]
    ok = subprocess.run(cmd + [str(root / "simclr"), str(root / "sen"), "--out", str(tmp_path / "c")],
                        capture_output=True, text=True, env=env, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "paper: SimCLR" in ok.stdout and (tmp_path / "c" / "compare.png").is_file()
    (tmp_path / "bare").mkdir()
    bad = subprocess.run(cmd + [str(tmp_path / "bare"), "--out", str(tmp_path / "c2")], capture_output=True,
                         text=True, env=env, timeout=120)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith("Error: ") and "ctxssl evaluate" in bad.stderr

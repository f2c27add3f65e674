"""Bad input to embed and evaluate: option ranges, context files, output paths, interrupted writes, the
context recorded in files and reports, and progress lines on a redirected stderr."""

import json
import math
import sys

import numpy as np
import pytest
import torch
from safetensors import safe_open

from ctxssl_cli import embed
from ctxssl_cli.tensorfile import StreamWriter
from ctxssl_cli.cli.app import main
from ctxssl_cli.errors import CtxsslError
from ctxssl_cli.evaluate.pipeline import EvalSettings, check_given, evaluate_run
from ctxssl_cli.evaluate.probes import ProbeSettings
from ctxssl_cli.evaluate.report import build_markdown, print_tables, write_report
from ctxssl_cli.progress import Progress
from test_embed import run  # noqa: F401  (the tiny trained run fixture)

FAST = ProbeSettings(cls_epochs=2, cls_batch_size=1000)
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256))


def ctxssl(monkeypatch, capfd, *args):
    """Run the CLI in this process: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["ctxssl", *map(str, args)])
    with pytest.raises(SystemExit) as e:
        main()
    cap = capfd.readouterr()
    return e.value.code, cap.out, cap.err


def one_error_line(code, err):
    assert code not in (0, None) and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("Error: ") and " — " in lines[-1], err
    return lines[-1]


def context_file(run, path, n=3):
    split = run.data.split("train")
    pairs = "".join(f"  - {{object: '{split.object_ids[i]}', from: 0, to: {i % 4 + 1}}}\n" for i in range(n))
    path.write_text("pairs:\n" + pairs)
    return path


# ---- item 8: numeric options are range-checked before any work --------------------------------------------
@pytest.mark.parametrize("args, words", [
    (("--batch-size", -5), "--batch-size -5"),
    (("--batch-size", 0), "--batch-size 0"),
    (("--batch-size", 10 ** 9), "between 1 and"),
    (("--views-per-object", -1), "--views-per-object -1"),
    (("--context-length", 3), "even"),
    (("--context-length", -2), "even"),
    (("--context-mode", "shape"), "unknown context mode"),
    (("--out", "e.pt"), ".safetensors"),
])
def test_embed_refuses_bad_options_before_loading_the_run(run, tmp_path, monkeypatch, capfd, args, words):
    def no_load(*a, **k):
        raise AssertionError("the run was loaded before the options were checked")

    monkeypatch.setattr("ctxssl_cli.runs.load_run", no_load)
    monkeypatch.chdir(tmp_path)
    code, _, err = ctxssl(monkeypatch, capfd, "embed", "--checkpoint", run.checkpoint, "--context-length", 2,
                          "--out", tmp_path / "e.safetensors", *args)
    assert words in one_error_line(code, err)
    assert not list(tmp_path.glob("*.safetensors"))


def test_acceptance_batch_size_without_a_run(tmp_path, monkeypatch, capfd):
    code, _, err = ctxssl(monkeypatch, capfd, "embed", "--checkpoint", tmp_path / "run", "--data", tmp_path / "s",
                          "--context-length", 2, "--batch-size", -5, "--out", tmp_path / "e.safetensors")
    assert "--batch-size -5" in one_error_line(code, err)


@pytest.mark.parametrize("args, words", [
    (("--views-per-object", 99), "more than the 5 views"),
    (("--split", "test"), "no split 'test'"),
    (("--context-length", 8), "block size"),
])
def test_embed_refuses_options_that_do_not_fit_the_run(run, tmp_path, monkeypatch, capfd, args, words):
    code, _, err = ctxssl(monkeypatch, capfd, "embed", "--checkpoint", run.checkpoint, "--out",
                          tmp_path / "e.safetensors", *args)
    assert words in one_error_line(code, err)


def test_non_integer_and_non_finite_options(monkeypatch, capfd, tmp_path):
    code, _, err = ctxssl(monkeypatch, capfd, "embed", "--checkpoint", tmp_path, "--batch-size", "nan")
    assert code not in (0, None) and "Traceback" not in err and "--batch-size" in err
    for bad in (float("nan"), float("inf"), 0.0, -1.0):
        with pytest.raises(CtxsslError, match="kNN temperature"):
            EvalSettings(knn_t=bad)
    with pytest.raises(CtxsslError, match="--r2"):
        EvalSettings(r2_kind="pearson")
    with pytest.raises(CtxsslError, match="batch size"):
        EvalSettings(batch_size=0)
    with pytest.raises(CtxsslError, match="not an integer"):
        embed.EmbedSettings(batch_size=math.inf)


# ---- item 11: context files -------------------------------------------------------------------------------
@pytest.mark.parametrize("content, words", [
    (PNG, "not a text file"),
    (bytes(np.random.default_rng(0).integers(128, 256, 300, dtype=np.uint8)), "not a text file"),
    (b"pairs: [\n  {object: 0, from: 0\n", "not valid YAML"),
    (b"pairs:\n\t- x\n", "not valid YAML"),
    (b"- {object: 0, from: 0, to: 1}\n", "holds a list"),
    (b"pairs: {object: 0, from: 0, to: 1}\n", "no 'pairs' list"),
    (b"", "no 'pairs' list"),
    (b"pairs:\n  - [0, 0, 1]\n", "pair 1: a pair must have exactly the keys"),
    (b"pairs:\n  - {object: 0, from: 0, to: 1}\n  - {object: 'nope/1', from: 0, to: 1}\n", "pair 2: object 'nope/1'"),
    (b"pairs:\n  - {object: 99, from: 0, to: 1}\n", "pair 1: object index 99 is out of range"),
    (b"pairs:\n  - {object: 0, from: -1, to: 1}\n", "pair 1: view from=-1 is out of range"),
    (b"pairs:\n  - {object: 0, from: 0, to: 5}\n", "pair 1: view to=5 is out of range"),
    (b"pairs:\n  - {object: 0, from: 0, to: 1.5}\n", "to=1.5"),
    (b"split: [1]\npairs:\n  - {object: 0, from: 0, to: 1}\n", "is not a name"),
    (b"!!python/object:os.system {}\n", "not valid YAML"),
])
def test_bad_context_files_are_one_line_naming_the_file(run, tmp_path, content, words):
    f = tmp_path / "ctx.yaml"
    f.write_bytes(content)
    with pytest.raises(CtxsslError, match=words) as e:
        embed.load_context_file(run, f)
    assert str(f) in e.value.message and "\n" not in e.value.message


def test_bad_context_file_through_the_cli(run, tmp_path, monkeypatch, capfd):
    f = tmp_path / "ctx.png"
    f.write_bytes(PNG)
    code, _, err = ctxssl(monkeypatch, capfd, "embed", "--checkpoint", run.checkpoint, "--context-pairs", f,
                          "--context-length", 2, "--out", tmp_path / "e.safetensors")
    assert "not a text file" in one_error_line(code, err)
    code, _, err = ctxssl(monkeypatch, capfd, "embed", "--checkpoint", run.checkpoint, "--context-pairs",
                          tmp_path / "missing.yaml")
    assert "does not exist" in one_error_line(code, err)


# ---- item 12: output paths and interrupted writes ---------------------------------------------------------
def test_out_must_be_a_writable_file(run, tmp_path, monkeypatch, capfd):
    (tmp_path / "dir.safetensors").mkdir()
    (tmp_path / "afile").write_text("x")
    for target, words in [(tmp_path / "dir.safetensors", "is a folder"),
                          (tmp_path / "afile" / "e.safetensors", "is a file, not a folder")]:
        code, _, err = ctxssl(monkeypatch, capfd, "embed", "--checkpoint", run.checkpoint, "--out", target)
        assert words in one_error_line(code, err)


@pytest.mark.parametrize("fault", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_failed_save_leaves_no_temp_file(run, tmp_path, monkeypatch, fault):
    ctx = embed.default_context(run)
    tensors = {"h": torch.zeros(2, 3, 4), "z.color.0": torch.zeros(2, 3, 4)}
    meta = embed.embeddings_metadata(run, "val", ["color"], [0], ctx, False, None)
    add = StreamWriter.add

    def half_written(self, name, t):  # the second tensor fails part-way through its bytes
        if self.entries:
            self.f.write(b"partial")
            raise fault
        add(self, name, t)

    monkeypatch.setattr(StreamWriter, "add", half_written)
    out = tmp_path / "sub" / "e.safetensors"
    with pytest.raises(type(fault)) as e:
        embed.save_embeddings(out, tensors, meta)
    if isinstance(fault, OSError):  # named after the target, for the one-line message (cli/app.os_error_message)
        assert e.value.errno == 28 and e.value.filename == str(out)
    assert list((tmp_path / "sub").iterdir()) == []


# ---- item 6: the context is recorded, keyed and reported --------------------------------------------------
def test_context_source_is_recorded_keyed_and_reported(run, tmp_path, monkeypatch, capfd):
    f = context_file(run, tmp_path / "ctx.yaml")
    code, out, _ = ctxssl(monkeypatch, capfd, "embed", "--checkpoint", run.checkpoint, "--context-pairs", f,
                          "--context-length", 0, "--context-length", 2, "--out", tmp_path / "val.safetensors",
                          "--retrieval")
    assert code == 0 and f"context file {f}" in out and "3 train pairs" in out
    with safe_open(str(tmp_path / "val.safetensors"), framework="pt") as fh:
        meta = fh.metadata()
    desc = json.loads(meta["context"])
    assert desc["kind"] == "file" and desc["source"] == str(f) and desc["n_pairs"] == 3
    assert len(desc["sha256"]) == 64 and desc["sha256"][:12] in meta["context_source"]
    default = embed.embeddings_metadata(run, "val", ["rotation"], [0], embed.default_context(run), False, None)
    assert "default seeded context" in default["context_source"]
    mine = embed.embeddings_metadata(run, "val", ["rotation"], [0], embed.load_context_file(run, f), False, None)
    assert embed.cache_key(mine) != embed.cache_key(default)
    f.write_text(f.read_text() + "  - {object: 0, from: 1, to: 2}\n")  # another file: another key
    again = embed.embeddings_metadata(run, "val", ["rotation"], [0], embed.load_context_file(run, f), False, None)
    assert embed.cache_key(again) != embed.cache_key(mine)


def test_evaluate_refuses_train_and_val_of_different_contexts(run, tmp_path):
    f = context_file(run, tmp_path / "ctx.yaml")
    made = {}
    for split, pairs in (("train", None), ("val", f)):
        made[split] = embed.embed_run(run.checkpoint, None, "cpu", embed.EmbedSettings(
            split=split, modes=["rotation"], lengths=[0, 2], context_pairs=pairs, retrieval=split == "val",
            out=tmp_path / f"{split}.safetensors")).path
    with pytest.raises(CtxsslError, match="different contexts") as e:
        check_given(run, [made["train"], made["val"]])
    assert str(f) in e.value.message and "default seeded context" in e.value.message
    with pytest.raises(CtxsslError, match="two --embeddings files"):
        check_given(run, [made["val"], made["val"]])


def test_evaluate_reports_the_context_of_the_given_files(run, tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("CTXSSL_PROGRESS", "plain")
    monkeypatch.setenv("CTXSSL_PROGRESS_INTERVAL", "0")
    f = context_file(run, tmp_path / "ctx.yaml")
    val = embed.embed_run(run.checkpoint, None, "cpu", embed.EmbedSettings(
        modes=["rotation"], lengths=[0, 2], context_pairs=f, retrieval=True, out=tmp_path / "val.safetensors")).path
    s = EvalSettings(lengths=[0, 2], modes=["rotation"], probe=FAST, knn_k=5, train_views_per_object=3, probe_epochs=2)
    capfd.readouterr()
    report = evaluate_run(run, s, [val], tmp_path / "cache", progress=Progress)
    err = capfd.readouterr().err
    assert "encode train:" in err and "R² probes (published protocol):" in err  # plain progress lines: embedding, probes
    assert report["meta"]["context"]["kind"] == "file" and report["meta"]["context"]["source"] == str(f)
    cached = list((tmp_path / "cache").glob("train-*.safetensors"))  # train embedded with the file's context
    with safe_open(str(cached[0]), framework="pt") as fh:
        assert json.loads(fh.metadata()["context"])["sha256"] == report["meta"]["context"]["sha256"]
    paths = write_report(report, tmp_path / "rep")
    assert json.loads(paths[0].read_text())["meta"]["context"]["source"] == str(f)
    assert f"**context**: context file {f}" in build_markdown(report)
    import io

    from rich.console import Console

    buf = io.StringIO()
    print_tables(report, Console(file=buf, width=200, color_system=None))
    assert f"context: context file {f}" in buf.getvalue()


# ---- part 4: progress on a redirected stderr --------------------------------------------------------------
def test_embed_prints_plain_progress_lines_when_stderr_is_not_a_terminal(run, tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("CTXSSL_PROGRESS", "plain")
    monkeypatch.setenv("CTXSSL_PROGRESS_INTERVAL", "0")
    code, out, err = ctxssl(monkeypatch, capfd, "embed", "--checkpoint", run.checkpoint, "--context-length", 2,
                            "--batch-size", 8, "--out", tmp_path / "e.safetensors")
    assert code == 0, err
    assert "encode val:" in err and "contexts val:" in err and "img/s" in err
    assert "encode val:" not in out  # results on stdout, progress on stderr
    monkeypatch.setenv("CTXSSL_PROGRESS", "bar")
    code, out, err = ctxssl(monkeypatch, capfd, "embed", "--checkpoint", run.checkpoint, "--context-length", 2,
                            "--out", tmp_path / "e2.safetensors")
    assert code == 0 and "embeddings:" in out, err

"""End to end through the CLI on tiny shapes: prepare -> pretrain -> resume -> embed -> evaluate."""

import json
import os
import subprocess
import sys

from safetensors import safe_open

TINY = ["--set", "train.batch_size=16", "--set", "model.block_size=8", "--set", "model.n_embd=32",
        "--set", "model.n_layer=1", "--set", "model.n_head=2", "--set", "model.encoder=convnet",
        "--set", "model.aux_hidden=32", "--set", "data.workers=0", "--set", "train.checkpoint_every=2"]


def ctxssl(tmp_path, *args, ok=True):
    env = {**os.environ, "CTXSSL_HOME": str(tmp_path / "home"), "CTXSSL_RUNS": str(tmp_path / "runs")}
    r = subprocess.run([sys.executable, "-m", "ctxssl_cli", *map(str, args)], capture_output=True, text=True,
                       env=env, cwd=tmp_path, timeout=600)
    if ok:
        assert r.returncode == 0, r.stderr
    return r


def test_prepare_pretrain_resume_embed_evaluate(tmp_path):
    data = tmp_path / "s"
    ctxssl(tmp_path, "prepare", "synthetic", "--out", data, "--classes", 3, "--objects-per-class", 6, "--views", 6,
           "--resolution", 16, "--seed", 0, "--workers", 1)
    again = ctxssl(tmp_path, "prepare", "synthetic", "--out", data, "--classes", 3, ok=False)
    assert again.returncode != 0 and "--overwrite" in again.stderr

    run = tmp_path / "runs" / "r"
    ctxssl(tmp_path, "pretrain", "--preset", "rotcolor", "--data", data, "--out", run, "--device", "cpu",
           *TINY, "--set", "train.max_steps=2", "--set", "train.epochs=1")
    # the schedule is longer now: resume continues from step 2 to the end of the epochs
    ctxssl(tmp_path, "pretrain", "--preset", "rotcolor", "--out", run, "--device", "cpu", "--resume",
           *TINY, "--set", "train.max_steps=4", "--set", "train.epochs=1")
    assert {p.name for p in run.iterdir()} >= {"spec.yaml", "checkpoint.safetensors", "metrics.jsonl", "train.log"}

    emb = tmp_path / "e.safetensors"
    r = ctxssl(tmp_path, "embed", "--context-mode", "rotation", "--context-length", 0, "--context-length", 2,
               "--out", emb)  # latest run, its recorded dataset, val split
    assert str(emb) in r.stdout
    with safe_open(str(emb), framework="pt") as f:
        keys = set(f.keys())
        meta = f.metadata()
    assert {"h", "z.rotation.0", "z.rotation.2", "latents", "labels"} <= keys
    assert meta["split"] == "val" and len(meta["checkpoint_sha256"]) == 64

    bad = ctxssl(tmp_path, "embed", "--context-length", 3, ok=False)
    assert bad.returncode != 0 and "even" in bad.stderr and "Traceback" not in bad.stderr
    bad = ctxssl(tmp_path, "embed", "--context-length", 8, ok=False)
    assert bad.returncode != 0 and "block size" in bad.stderr

    rep = tmp_path / "rep"
    ctxssl(tmp_path, "evaluate", "--out", rep, "--context-length", 0, "--context-length", 2, "--probe-epochs", 3)
    report = json.loads((rep / "report.json").read_text())
    assert set(report) == {"r2", "r2_definitions", "share", "mrr", "top1", "knn", "meta"}
    assert report["meta"]["settings"]["probes"] == "paper" and report["meta"]["settings"]["r2"] == "paper"
    assert report["r2_definitions"]["paper"] == report["r2"] and set(report["r2_definitions"]["sklearn"]) == set(report["r2"])
    for mode in ("rotation", "color", "none"):
        assert set(report["r2"][mode]) == {"0", "2"} and set(report["share"][mode]) == {"0", "2"}
        assert set(report["mrr"][mode]["2"]) == {"mrr", "h@1", "h@2", "h@5", "h@10"}
    assert set(report["r2"]["features"]) == {"rotation", "color"}
    for name in ("report.md", "r2_vs_context.png", "mrr_vs_context.png"):
        assert (rep / name).stat().st_size > 0

    # an embeddings file from another checkpoint is refused
    other = tmp_path / "runs" / "other"
    ctxssl(tmp_path, "pretrain", "--preset", "rotcolor", "--data", data, "--out", other, "--device", "cpu", *TINY,
           "--set", "train.max_steps=1", "--set", "train.seed=5")
    r = ctxssl(tmp_path, "evaluate", "--checkpoint", other, "--embeddings", emb, "--out", tmp_path / "rep2", ok=False)
    assert r.returncode != 0 and "another checkpoint" in r.stderr

    # the run's dataset rendered again differently: refused, unless the user names a dataset on purpose
    ctxssl(tmp_path, "prepare", "synthetic", "--out", data, "--classes", 3, "--objects-per-class", 6, "--views", 6,
           "--resolution", 16, "--seed", 1, "--workers", 1, "--overwrite")
    r = ctxssl(tmp_path, "embed", "--context-length", 0, "--out", tmp_path / "e2.safetensors", ok=False)
    assert r.returncode != 0 and "has changed since" in r.stderr and "--data" in r.stderr
    ctxssl(tmp_path, "embed", "--context-length", 0, "--data", data, "--out", tmp_path / "e2.safetensors")


def test_prepare_synthetic_twice_with_the_same_settings_is_a_no_op(tmp_path):
    args = ["prepare", "synthetic", "--out", tmp_path / "s", "--classes", 2, "--objects-per-class", 2, "--views", 3,
            "--resolution", 16, "--workers", 1]
    ctxssl(tmp_path, *args)
    before = (tmp_path / "s" / "manifest.yaml").stat().st_mtime_ns
    r = ctxssl(tmp_path, *args)
    assert "already prepared" in r.stdout
    assert (tmp_path / "s" / "manifest.yaml").stat().st_mtime_ns == before

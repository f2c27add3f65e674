"""The CLI: options frozen (a changed flag is a deliberate decision), one-line errors, no tracebacks."""

import os
import subprocess
import sys

import pytest
import typer

from ctxssl_cli.cli.app import app

# Freeze the public options of every command: update this table on purpose, with a CHANGELOG line.
EXPECTED = {
    ("prepare", "synthetic"): {"--out", "--classes", "--objects-per-class", "--views", "--resolution", "--seed",
                               "--layout", "--workers", "--overwrite"},
    ("prepare", "3diebench"): {"--source", "--out", "--resolution", "--codec", "--train-list", "--val-list",
                               "--train-labels", "--val-labels", "--workers", "--overwrite"},
    ("pretrain",): {"--preset", "--data", "--out", "--name", "--set", "--device", "--resume", "--overwrite",
                    "--compile", "--log"},
    ("embed",): {"--checkpoint", "--data", "--split", "--context-mode", "--context-length", "--context-pairs",
                 "--views-per-object", "--retrieval", "--batch-size", "--device", "--out"},
    ("evaluate",): {"--checkpoint", "--data", "--embeddings", "--context-length", "--probes", "--probe-epochs", "--r2",
                    "--probe-memory",
                    "--train-views", "--device", "--out"},
    ("compare",): {"--out", "--allow-mixed"},
    ("plot",): {"--out"},
    ("export",): {"--out", "--overwrite"},
    ("prepare", "cifar10"): {"--source", "--out", "--codec", "--overwrite"},
    ("prepare", "images"): {"--source", "--out", "--val-fraction", "--resolution", "--codec", "--workers", "--seed",
                            "--overwrite"},
}


def _options(cmd) -> set[str]:
    names = set()
    for p in cmd.params:
        names.update(o for o in p.opts if o.startswith("--"))
    return names - {"--help", "--no-retrieval"}


def test_cli_options_are_frozen():
    root = typer.main.get_command(app)
    for path, expected in EXPECTED.items():
        cmd = root
        for part in path:
            cmd = cmd.commands[part]
        assert _options(cmd) == expected, path


def _run(*args, env=None):
    e = {**os.environ, **(env or {})}
    e.pop("CTXSSL_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "ctxssl_cli", *args], capture_output=True, text=True, env=e,
                          timeout=120)


def test_help_lists_the_four_commands():
    r = _run("--help")
    assert r.returncode == 0
    for c in ("prepare", "pretrain", "embed", "evaluate"):
        assert c in r.stdout


@pytest.mark.parametrize("args, words", [
    (("pretrain", "--preset", "rotation", "--set", "train.epohcs=3"), "train.epochs"),
    (("pretrain", "--preset", "nosuch"), "unknown preset"),
    (("prepare", "3diebench"), "SIE"),
    (("prepare", "3diebench", "--source", "/nonexistent/3diebench"), "/nonexistent/3diebench"),
    (("prepare", "synthetic", "--layout", "blender"), "--layout"),
    (("embed", "--checkpoint", "/nonexistent/run"), "does not exist"),
    (("evaluate", "--checkpoint", "/nonexistent/run"), "does not exist"),
    (("pretrain", "--preset", "demo/simclr", "--set", "train.mask_prob=0.5"), "train.mask_prob"),
    (("pretrain", "--preset", "demo/simclr", "--set", "sie.equi_dim=64"), "method sie"),
    (("compare", "/nonexistent/run", "--out", "/nonexistent/cmp"), "does not exist"),
])
def test_bad_input_is_one_line_without_traceback(args, words, tmp_path):
    r = _run(*args, env={"CTXSSL_HOME": str(tmp_path), "CTXSSL_RUNS": str(tmp_path / "runs")})
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("Error: ") and " — " in lines[-1], r.stderr
    assert words in r.stderr
    assert "Traceback" not in r.stderr


def test_embed_without_any_run_says_how_to_make_one(tmp_path):
    r = _run("embed", "--context-length", "14", env={"CTXSSL_RUNS": str(tmp_path / "runs")})
    assert r.returncode != 0 and "no run found" in r.stderr and "ctxssl pretrain" in r.stderr


def test_debug_variable_shows_the_traceback(tmp_path):
    e = {**os.environ, "CTXSSL_DEBUG": "1"}
    r = subprocess.run([sys.executable, "-m", "ctxssl_cli", "pretrain", "--preset", "nosuch"], capture_output=True,
                       text=True, env=e, timeout=120)
    assert r.returncode != 0 and "Traceback" in r.stderr

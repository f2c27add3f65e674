"""Ctrl-C during training: a checkpoint is saved, exit 130, and the printed resume command works as printed."""

import os
import shlex
import signal
import subprocess
import sys
import time

import pytest

TINY = ["--set", "train.batch_size=16", "--set", "model.block_size=8", "--set", "model.n_embd=32",
        "--set", "model.n_layer=1", "--set", "model.n_head=2", "--set", "model.encoder=convnet",
        "--set", "model.aux_hidden=32", "--set", "data.workers=0", "--set", "train.checkpoint_every=1000",
        "--set", "train.max_steps=400", "--set", "train.epochs=1000"]


@pytest.mark.slow
def test_sigint_saves_and_the_printed_resume_command_runs(tmp_path):
    env = {**os.environ, "CTXSSL_HOME": str(tmp_path / "home"), "CTXSSL_RUNS": str(tmp_path / "runs"),
           "CTXSSL_PROGRESS": "plain", "CTXSSL_PROGRESS_INTERVAL": "0"}
    cli = [sys.executable, "-m", "ctxssl_cli"]
    subprocess.run(cli + ["prepare", "synthetic", "--out", str(tmp_path / "s"), "--classes", "4",
                          "--objects-per-class", "4", "--views", "4", "--resolution", "16", "--workers", "1"],
                   env=env, check=True, capture_output=True, timeout=300)
    run = tmp_path / "run"
    p = subprocess.Popen(cli + ["pretrain", "--preset", "rotcolor", "--data", str(tmp_path / "s"), "--out", str(run),
                                "--device", "cpu", *TINY], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not ((run / "train.log").is_file() and "pretrain: " in (run / "train.log").read_text()):
        time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    out, errs = p.communicate(timeout=120)
    assert p.returncode == 130, errs
    assert (run / "checkpoint.safetensors").is_file()
    line = next(ln for ln in errs.splitlines() if "Continue with:" in ln)
    cmd = shlex.split(line.split("Continue with:", 1)[1])
    assert cmd[:2] == ["ctxssl", "pretrain"]
    r = subprocess.run(cli + cmd[1:], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "final_step: 400" in r.stdout

"""Training curves: RUN/curves.png from metrics.jsonl, `ctxssl plot` overlaying runs, `--log tensorboard`."""

import importlib.util
import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from ctxssl_cli.cli.app import app
from ctxssl_cli.curves import plot_command, read_metrics, write_curves
from ctxssl_cli.errors import CtxsslError

PNG = b"\x89PNG\r\n\x1a\n"


def _run(tmp_path, name, rows, torn=False):
    d = tmp_path / name
    d.mkdir()
    text = "".join(json.dumps(r) + "\n" for r in rows)
    (d / "metrics.jsonl").write_text(text + ('{"step": 9' if torn else ""))
    return d


ROWS = [{"step": s, "epoch": s // 3, "env": "rotation" if s % 20 else "color", "loss": 5.0 / s, "nce": 4.0 / s,
         "aux": 0.1, "aux_r2": 0.01 * s, "lr": 1e-3, "pairs_per_s": 900.0} for s in range(10, 110, 10)]
BASELINE = [{"step": s, "epoch": s, "loss": 3.0 / s, "inv": 1.0, "std": 0.5, "cov": 0.1, "lr": 1e-3,
             "pairs_per_s": 800.0} for s in range(10, 60, 10)]


def test_curves_png_of_a_run_and_a_torn_last_line(tmp_path):
    d = _run(tmp_path, "a", ROWS, torn=True)
    assert [r["step"] for r in read_metrics(d)] == list(range(10, 110, 10))
    path = write_curves(d)
    assert path == d / "curves.png" and path.read_bytes()[:8] == PNG


def test_plot_overlays_runs_of_different_methods(tmp_path):
    a, b = _run(tmp_path, "a", ROWS), _run(tmp_path, "b", BASELINE)
    res = CliRunner().invoke(app, ["plot", str(a), str(b), "--out", str(tmp_path / "o" / "c.png")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "o" / "c.png").read_bytes()[:8] == PNG


def test_plot_refusals(tmp_path):
    a = _run(tmp_path, "a", ROWS)
    with pytest.raises(CtxsslError, match="must end in .png"):
        plot_command([a], tmp_path / "c.jpg")
    with pytest.raises(CtxsslError, match="does not exist"):
        plot_command([tmp_path / "nope"], tmp_path / "c.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CtxsslError, match="has no metrics.jsonl"):
        plot_command([tmp_path / "empty"], tmp_path / "c.png")
    with pytest.raises(CtxsslError, match="holds no logged step"):
        plot_command([_run(tmp_path, "z", [])], tmp_path / "c.png")


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is not None, reason="tensorboard is installed")
def test_log_tensorboard_without_the_package_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "ctxssl_cli", "pretrain", "--preset", "demo", "--log", "tensorboard",
                        "--out", str(tmp_path / "r")], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.startswith("Error: --log tensorboard needs the tensorboard package") and "pip install" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "r").exists()
    r = subprocess.run([sys.executable, "-m", "ctxssl_cli", "pretrain", "--preset", "demo", "--log", "wandb",
                        "--out", str(tmp_path / "r")], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("Error: unknown --log 'wandb'")

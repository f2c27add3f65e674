"""End to end on 2D data, as a user types it: an image folder -> prepare images -> pretrain demo-2d -> embed ->
evaluate (R² of crop, colour and blur per mode and length, top-1, the plots and retrieval figures)."""

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image


def _ctxssl(*args, home):
    env = {**os.environ, "CTXSSL_HOME": str(home), "CTXSSL_RUNS": str(home / "runs")}
    env.pop("CTXSSL_DEBUG", None)
    r = subprocess.run([sys.executable, "-m", "ctxssl_cli", *args], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return r


def test_image_folder_to_report(tmp_path):
    rng = np.random.default_rng(0)
    for c in ("disc", "bar", "noise"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(8):
            img = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
            if c == "disc":
                yy, xx = np.mgrid[:40, :48]
                img[(yy - 20) ** 2 + (xx - 24) ** 2 < 100] = (250, 30, 30)
            elif c == "bar":
                img[:, 20:28] = (30, 30, 250)
            Image.fromarray(img).save(tmp_path / "imgs" / c / f"{i}.png")
    _ctxssl("prepare", "images", "--source", str(tmp_path / "imgs"), "--out", str(tmp_path / "i"),
            "--resolution", "24", home=tmp_path)
    _ctxssl("pretrain", "--preset", "demo-2d", "--data", str(tmp_path / "i"), "--out", str(tmp_path / "run"),
            "--device", "cpu", "--set", "train.max_steps=3", "--set", "train.batch_size=8",
            "--set", "model.block_size=8", "--set", "model.n_embd=32", "--set", "model.n_layer=1",
            "--set", "model.n_head=2", "--set", "data.resolution=16", home=tmp_path)
    assert (tmp_path / "run" / "curves.png").is_file()
    emb = _ctxssl("embed", "--checkpoint", str(tmp_path / "run"), "--context-length", "2", home=tmp_path)
    assert "crop" in emb.stdout + emb.stderr
    _ctxssl("evaluate", "--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "rep"),
            "--context-length", "0", "--context-length", "2", "--probe-epochs", "2", home=tmp_path)
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert rep["meta"]["schema"]["name"] == "augment2d"
    for mode in ("crop", "color", "blur", "none"):
        for c in ("0", "2"):
            assert set(rep["r2"][mode][c]) == {"crop", "color", "blur"}
    assert "features" in rep["top1"]
    for name in ("r2_vs_context.png", "retrieval.png", "retrieval_crop_blur.png", "retrieval_color_blur.png"):
        assert (tmp_path / "rep" / name).stat().st_size > 0

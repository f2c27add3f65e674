"""Install the built wheel into a throw-away venv and run the product from there (`make test-wheel`).

An editable install (what `make setup` does) reads presets and modules from the source tree and so hides a wheel
that lacks them. This script builds the wheel, creates a fresh venv, makes the already-installed torch and
torchvision (and only what they require) visible to it through a .pth file (no second multi-GB download),
lets pip install the wheel's other declared dependencies, and runs from a folder outside the source tree:

    ctxssl --help; ctxssl pretrain --preset demo --help; every preset of presets/ loads from the installed package;
    prepare synthetic (4 classes) -> a 2-step tiny pretrain --preset rotation -> embed -> evaluate; a 2-step
    pretrain --preset demo/sen (a baseline) -> evaluate -> compare.

It fails when a preset, a module or a runtime dependency is missing from the wheel (the product's test extras,
scikit-learn, scipy and pytest, are not visible in the venv).

Usage: python tests/wheel_smoke.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ("torch", "torchvision")  # large, already installed next to this interpreter: shared, not reinstalled
TINY = ["--set", "train.batch_size=16", "--set", "model.block_size=8", "--set", "model.n_embd=32",
        "--set", "model.n_layer=1", "--set", "model.n_head=2", "--set", "model.encoder=convnet",
        "--set", "model.aux_hidden=32", "--set", "data.workers=0", "--set", "train.max_steps=2",
        "--set", "train.epochs=1", "--set", "data.resolution=16"]


def _name(req: str) -> str:
    return re.split(r"[ ;<>=!~\[(]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def closure(names) -> list[md.Distribution]:
    """The installed distributions `names` need (Requires-Dist followed, extras and unmet markers skipped)."""
    from packaging.requirements import Requirement  # pip's own vendored copy is not public; packaging is there

    seen, todo, out = set(), list(names), []
    while todo:
        n = _name(todo.pop())
        if n in seen:
            continue
        seen.add(n)
        try:
            dist = md.distribution(n)
        except md.PackageNotFoundError:
            continue
        out.append(dist)
        for r in dist.requires or []:
            req = Requirement(r)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            todo.append(req.name)
    return out


def share(dists, target: Path) -> None:
    """Symlink every top-level entry the distributions installed into `target`."""
    target.mkdir(parents=True)
    for dist in dists:
        base = Path(dist.locate_file(""))
        tops = {Path(str(f)).parts[0] for f in (dist.files or []) if not str(f).startswith("..")}
        for top in tops:
            src, dst = base / top, target / top
            if src.exists() and not dst.exists() and top != "__pycache__" and not top.endswith(".pth"):
                dst.symlink_to(src)


def run(cmd, cwd, env, ok=True) -> subprocess.CompletedProcess:
    t0 = time.perf_counter()
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    print(f"[wheel] {' '.join(map(str, cmd[:4]))} ... -> {r.returncode} ({time.perf_counter() - t0:.1f} s)",
          flush=True)
    if ok and r.returncode != 0:
        sys.exit(f"wheel smoke test failed: {' '.join(map(str, cmd))}\n--- stdout\n{r.stdout}\n--- stderr\n{r.stderr}")
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temp folder, removed)")
    args = ap.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="ctxssl-wheel-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(CTXSSL_HOME=str(work / "home"), CTXSSL_RUNS=str(work / "runs"), PIP_DISABLE_PIP_VERSION_CHECK="1")
    try:
        # 1. the wheel, built from a clean copy of the tracked tree's files
        run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", work / "whl", ROOT], work, env)
        wheel = next((work / "whl").glob("ctxssl-*.whl"))
        # 2. a fresh venv that sees torch/torchvision (and what they need) but nothing else of ours
        venv = work / "venv"
        run([sys.executable, "-m", "venv", venv], work, env)
        py = venv / "bin" / "python"
        site = Path(run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], work, env)
                    .stdout.strip())
        share(closure(SHARED), work / "shared-site")
        (site / "zz_shared_torch.pth").write_text(str(work / "shared-site") + "\n")
        run([py, "-m", "pip", "install", "-q", wheel], work, env)
        for leak in ("sklearn", "scipy", "pytest"):  # test extras must not be visible
            if run([py, "-c", f"import {leak}"], work, env, ok=False).returncode == 0:
                sys.exit(f"wheel smoke test is not isolated: {leak} is importable in the throw-away venv")
        ctxssl = venv / "bin" / "ctxssl"
        # 3. the installed product, run from outside the source tree
        run([ctxssl, "--help"], work, env)
        r = run([ctxssl, "pretrain", "--preset", "demo", "--help"], work, env)
        assert "--preset" in r.stdout, r.stdout
        expected = sorted(str(p.relative_to(ROOT / "presets").with_suffix("")) for p in (ROOT / "presets").rglob("*.yaml"))
        check = ("import sys, ctxssl_cli, ctxssl_cli.spec as s; "
                 "assert 'site-packages' in ctxssl_cli.__file__, ctxssl_cli.__file__; "
                 "[s.load_spec(n) for n in s.preset_names()]; print(' '.join(s.preset_names()))")
        got = run([py, "-c", check], work, env).stdout.split()
        if got != expected:
            sys.exit(f"wheel smoke test failed: the wheel ships presets {got}, the source tree has {expected}")
        run([ctxssl, "prepare", "synthetic", "--out", work / "s", "--classes", 4, "--objects-per-class", 3,
             "--views", 6, "--resolution", 16, "--seed", 0, "--workers", 1], work, env)
        run([ctxssl, "pretrain", "--preset", "rotation", "--data", work / "s", "--out", work / "run",
             "--device", "cpu", *TINY], work, env)
        run([ctxssl, "embed", "--checkpoint", work / "run", "--context-length", 0, "--context-length", 2,
             "--out", work / "e.safetensors"], work, env)
        run([ctxssl, "evaluate", "--checkpoint", work / "run", "--context-length", 0, "--context-length", 2,
             "--probe-epochs", 5, "--out", work / "eval"], work, env)
        if not (work / "eval" / "report.json").is_file():
            sys.exit("wheel smoke test failed: evaluate wrote no report.json")
        # a baseline (SPEC §7) through the same commands, then compare: the methods/ modules and demo/ presets ship
        run([ctxssl, "pretrain", "--preset", "demo/sen", "--data", work / "s", "--out", work / "sen", "--device", "cpu",
             "--set", "train.batch_size=8", "--set", "train.max_steps=2", "--set", "sen.mlp=32-16",
             "--set", "data.resolution=16"], work, env)
        run([ctxssl, "evaluate", "--checkpoint", work / "sen", "--probe-epochs", 5], work, env)
        run([ctxssl, "compare", work / "sen", "--out", work / "cmp"], work, env)
        if not (work / "cmp" / "compare.json").is_file():
            sys.exit("wheel smoke test failed: compare wrote no compare.json")
        print(f"wheel smoke test passed: {wheel.name}, {len(got)} presets, prepare/pretrain/embed/evaluate/compare ran")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

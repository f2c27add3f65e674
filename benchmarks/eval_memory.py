"""Peak memory of `ctxssl embed` + `ctxssl evaluate` on a run, extrapolated linearly to full 3DIEBench.

    python benchmarks/eval_memory.py --checkpoint RUN_DIR [--data DIR] [--feature-dim 512]

Runs, each in a fresh child process (peak resident memory from getrusage): loading the run alone (the fixed
start-up cost: torch, the model, the dataset's index), `ctxssl embed --split train` and `--split val
--retrieval` (default modes and lengths) into a scratch folder, then `ctxssl evaluate --probe-epochs 1
--probe-memory 0` on the run (the probes' memory does not depend on the epochs; one embedding's probes at a time,
as the default --probe-memory gives at 3DIEBench's size, where one embedding is 5.4 GB; evaluate embeds both
splits again into a scratch cache, as a first evaluation does). Each stage's peak anonymous memory (what the
process allocated; the resident figure also counts the memory-mapped images of a raw-codec dataset, which the
kernel evicts under pressure) above start-up is scaled by 52,472 / objects (3DIEBench's size against this
dataset's) and by --feature-dim / F (ResNet-18's 512 against this run's F), added back to the start-up cost,
and printed as the extrapolated peak. The last line is `extrapolated_3diebench_gb: X`.

Use a dataset of at least 5,000 objects (`ctxssl prepare synthetic --objects-per-class 500 --resolution 32`),
so that what scales with the data dominates what does not. Nothing here is a timed test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

THREEDIEBENCH_OBJECTS = 52_472


# a child's own peak resident memory, written at exit (RUSAGE_CHILDREN would keep the largest child so far)
_WRAP = ("import atexit, os, resource, sys; "
         "atexit.register(lambda: open(os.environ['CTXSSL_PEAK_FILE'], 'w').write("
         "str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))); ")


def peak_gb(code: str, args: list, scratch: Path) -> tuple[float, float]:
    """Run `python -c code args` in a child process: (its peak resident memory, its peak anonymous memory) in GB.

    The first (getrusage's ru_maxrss) counts file pages mapped in too: the memory-mapped raw images of a prepared
    dataset, which the kernel drops under pressure. The second (RssAnon of /proc/PID/status, sampled every
    50 ms) is the memory the process itself allocated: what must fit in RAM."""
    peak_file = scratch / "peak.txt"
    env = {**os.environ, "CTXSSL_PEAK_FILE": str(peak_file)}
    proc = subprocess.Popen([sys.executable, "-c", _WRAP + code, *map(str, args)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    anon = 0
    while proc.poll() is None:
        try:
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    anon = max(anon, int(line.split()[1]))
        except OSError:
            pass
        time.sleep(0.05)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(map(str, args[:3]))} ... failed:\n{proc.stderr.read()[-2000:]}")
    return int(peak_file.read_text()) * 1024 / 1e9, anon * 1024 / 1e9  # both in KiB on Linux


CLI = "sys.argv = ['ctxssl'] + sys.argv[1:]; from ctxssl_cli.cli.app import main; main()"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", type=Path, required=True, help="a ContextSSL run folder or checkpoint")
    ap.add_argument("--data", type=Path, default=None, help="its dataset (default: the one the run names)")
    ap.add_argument("--feature-dim", type=int, default=512, help="F to extrapolate to (ResNet-18: 512)")
    args = ap.parse_args(argv)

    from ctxssl_cli.runs import load_run

    run = load_run(args.checkpoint, args.data, "cpu")
    n_objects = sum(run.split(s).n_objects for s in ("train", "val"))
    data = ["--data", run.data.root]
    scratch = Path(tempfile.mkdtemp(prefix="ctxssl-evalmem-"))
    try:
        work = scratch / "run"
        work.mkdir()
        shutil.copy2(run.checkpoint, work / run.checkpoint.name)  # a scratch run: its embeddings cache starts empty
        for extra in ("spec.yaml",):
            if (run.checkpoint.parent / extra).is_file():
                shutil.copy2(run.checkpoint.parent / extra, work / extra)
        load = f"from ctxssl_cli.runs import load_run; load_run(sys.argv[1], {str(run.data.root)!r}, 'cpu')"
        startup = peak_gb(load, [work], scratch)
        embed_train = peak_gb(CLI, ["embed", "--checkpoint", work, *data, "--split", "train",
                                    "--out", scratch / "train.safetensors", "--device", "cpu"], scratch)
        embed_val = peak_gb(CLI, ["embed", "--checkpoint", work, *data, "--split", "val", "--retrieval",
                                  "--out", scratch / "val.safetensors", "--device", "cpu"], scratch)
        evaluate = peak_gb(CLI, ["evaluate", "--checkpoint", work, *data, "--probe-epochs", "1", "--probe-memory", "0",
                                 "--out", scratch / "eval", "--device", "cpu"], scratch)
        report = json.loads((scratch / "eval" / "report.json").read_text())
        f_dim = int(torch_feature_dim(scratch / "train.safetensors"))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    stages = {"start-up": startup, "embed train": embed_train, "embed val": embed_val, "evaluate": evaluate}
    peak_anon = max(a for _, a in stages.values())
    scale = THREEDIEBENCH_OBJECTS / n_objects * args.feature_dim / f_dim
    print(f"run: {run.checkpoint}  data: {run.data.root} ({n_objects} objects, F = {f_dim})  threads: "
          f"{os.environ.get('OMP_NUM_THREADS', 'default')}")
    print("peak memory (GB), resident incl. mapped dataset files / anonymous: "
          + ", ".join(f"{k} {r:.2f} / {a:.2f}" for k, (r, a) in stages.items()))
    print(f"evaluate timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in report["meta"]["timings"].items()))
    print(f"scale to 3DIEBench: {THREEDIEBENCH_OBJECTS} / {n_objects} objects x {args.feature_dim} / {f_dim} features "
          f"= {scale:.1f}x on the {peak_anon - startup[1]:.2f} GB of anonymous memory above start-up")
    print(f"extrapolated_3diebench_gb: {startup[1] + (peak_anon - startup[1]) * scale:.1f}")


def torch_feature_dim(path: Path) -> int:
    from ctxssl_cli.tensorfile import LazyTensors

    tensors, _ = LazyTensors.open(path)
    return tensors.shape("h")[-1]


if __name__ == "__main__":
    main()

"""Training throughput beside a second busy PyTorch process, with and without ctxssl's thread governor.

    python benchmarks/contention.py [--steps 300] [--keep DIR]
    python benchmarks/train_step.py --contended        (the same)

Every case is a real `ctxssl pretrain --preset demo` run (CPU, the demo's model and batch) on a small rendered copy
of the built-in benchmark, timed by the trainer itself (the run's pairs/s over all its steps, start-up and any
thread change included). The neighbour is another demo training with its threads pinned to torch's default (it
never gives a core back, like any plain PyTorch job) started before the measured run and killed after it.

Cases: alone and beside the neighbour, each with `train.threads` pinned to torch's default (ctxssl <= 0.3: the
"before") and with `train.threads=0` (auto: follows the free cores, train/threads.py). Prints pairs/s of each and,
last, `contended_ratio: X` = auto beside the neighbour / auto alone (issue 17's bar: >= 0.4).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

CTXSSL = [sys.executable, "-m", "ctxssl_cli"]


def pretrain_cmd(data: Path, out: Path, steps: int, threads: int) -> list[str]:
    return CTXSSL + ["pretrain", "--preset", "demo", "--data", str(data), "--out", str(out), "--device", "cpu",
                     "--overwrite", "--set", f"train.max_steps={steps}", "--set", f"train.threads={threads}",
                     "--set", f"train.checkpoint_every={max(steps, 1)}"]


def measured(data: Path, out: Path, steps: int, threads: int) -> tuple[float, list[str]]:
    """pairs/s of one run (the trainer's own figure over all its steps) and its thread changes."""
    subprocess.run(pretrain_cmd(data, out, steps, threads), check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    changes = [ln[ln.index("threads "):ln.index(":", ln.index("threads "))]
               for ln in (out / "train.log").read_text().splitlines() if "threads " in ln and " -> " in ln]
    return rows[-1]["pairs_per_s"], changes


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300, help="steps of each measured run (demo: 128 pairs a step)")
    ap.add_argument("--keep", type=Path, help="keep the runs here (default: a temp folder)")
    args = ap.parse_args()
    default = torch.get_num_threads()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads {default}; "
          f"{time.strftime('%Y-%m-%d')}")
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        data = root / "data"
        if not (data / "manifest.yaml").is_file():
            subprocess.run(CTXSSL + ["prepare", "synthetic", "--out", str(data), "--classes", "10",
                                     "--objects-per-class", "40", "--views", "6", "--resolution", "32", "--seed", "0",
                                     "--overwrite"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        results = {}
        for threads, label in ((default, "pinned"), (0, "auto")):
            results[label, "alone"] = measured(data, root / f"{label}-alone", args.steps, threads)
            neighbour = subprocess.Popen(pretrain_cmd(data, root / "neighbour", 10 ** 8, default),
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                time.sleep(10)  # the neighbour is training before the measured run starts
                results[label, "contended"] = measured(data, root / f"{label}-contended", args.steps, threads)
            finally:
                neighbour.kill()
                neighbour.wait()
        for (label, case), (rate, changes) in results.items():
            what = "train.threads=0 (auto)" if label == "auto" else f"train.threads={default} (pinned, as <= 0.3)"
            print(f"{what:38s} {case:9s}: {rate:7.1f} pairs/s" + (f"   [{'; '.join(changes)}]" if changes else ""))
        before = results["pinned", "contended"][0] / results["pinned", "alone"][0]
        print(f"before (pinned) contended_ratio: {before:.3f}")
        print(f"contended_ratio: {results['auto', 'contended'][0] / results['auto', 'alone'][0]:.3f}")


if __name__ == "__main__":
    main()

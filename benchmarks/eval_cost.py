"""Cost of a full default `ctxssl evaluate`, in units of one encoder pass over the train and val views.

    python benchmarks/eval_cost.py [--checkpoint RUN_DIR] [--data DIR] [--device auto|cpu|cuda]

Same process, same run: first one encoder pass over every train and val view (batch 256), then the full
default evaluation (embeddings computed from scratch into a temp cache, all probes, retrieval, kNN). The
published protocol re-encodes the data in each of 300 probe epochs (~300 passes). Last line:
`encoder_passes: X` (bar: X <= 3).
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ctxssl_cli import embed as E
from ctxssl_cli.cli.common import latest_run
from ctxssl_cli.evaluate.pipeline import EvalSettings, evaluate_run
from ctxssl_cli.runs import load_run
from ctxssl_cli.devices import resolve_device


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, help="run folder or checkpoint (default: the latest run)")
    ap.add_argument("--data", type=Path)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    device = resolve_device(args.device)
    run = load_run(args.checkpoint or latest_run(), args.data, device)
    machine = torch.cuda.get_device_name() if device.type == "cuda" else f"{platform.machine()} CPU, {torch.get_num_threads()} threads"
    print(f"machine: {machine}; run: {run.checkpoint} (step {run.step}); data: {run.data.root}")

    t0 = time.perf_counter()
    n_views = 0
    for split in ("train", "val"):
        s = run.data.split(split)
        obj = np.repeat(np.arange(s.n_objects), s.n_views)
        view = np.tile(np.arange(s.n_views), s.n_objects)
        E.encode_views(run, split, obj, view, batch_size=256)
        n_views += len(obj)
    t_pass = time.perf_counter() - t0
    print(f"one encoder pass over {n_views} train+val views: {t_pass:.2f} s")

    settings = EvalSettings(lengths=E.default_lengths(run.spec.model.block_size))
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        report = evaluate_run(run, settings, [], Path(cache))
        t_eval = time.perf_counter() - t0
    print("evaluate timings (s): " + ", ".join(f"{k} {v:.2f}" for k, v in report["meta"]["timings"].items()))
    print(f"full default evaluate: {t_eval:.2f} s")
    print(f"encoder_passes: {t_eval / t_pass:.2f}")


if __name__ == "__main__":
    main()

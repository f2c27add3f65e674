"""How much of the bare training step's throughput the training loop keeps (SPEC §6: target >= 0.9).

    python benchmarks/loop_efficiency.py [--preset demo] [--steps 300] [--data PREPARED_DIR] [--device auto]

Same process, same spec, one after the other: (1) the bare step, exactly what the trainer runs per step
(`reference_step.our_step`: the scheduled lr, the context mask, `compute_loss` with the views resized on the
device, the non-finite check, backward, Adam) on one batch already in memory at the dataset's resolution;
(2) `pretrain` itself for the same number of steps into a temporary run folder: pair sampling and loading,
progress, metrics, thread polling and its checkpoints (every --steps/2 steps and at the end, as a real run
writes them). The loop's rate is its own reported `pairs_per_s` (all pairs over the loop's wall time from its
first step). Threads are pinned to torch's count on both sides. Without --data a small synthetic dataset at 64
px (the demo's stored size) is rendered into a temp folder. Last line: `loop_efficiency: X` (loop / bare).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from reference_step import make_inputs, our_step  # noqa: E402

from ctxssl_cli.data.prepared import PreparedDataset  # noqa: E402
from ctxssl_cli.devices import resolve_device  # noqa: E402
from ctxssl_cli.spec import load_spec  # noqa: E402
from ctxssl_cli.train.dist import DistInfo  # noqa: E402
from ctxssl_cli.train.loop import pretrain  # noqa: E402


def bare_rate(spec, data: PreparedDataset, device, steps: int, warmup: int = 5) -> float:
    """pairs/s of the bare step, median over blocks of 10 steps (one block per 10 steps asked)."""
    inp = make_inputs(spec.train.batch_size, data.resolution)
    step, _ = our_step(spec, inp, device, resolution=spec.data.resolution or data.resolution)
    for i in range(warmup):
        step(i)
    rates = []
    for b in range(max(steps // 10, 1)):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for i in range(10):
            step(warmup + 10 * b + i)
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(10 * spec.train.batch_size / (time.perf_counter() - t0))
    return statistics.median(rates)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--steps", type=int, default=300, help="training-loop steps (and bare steps)")
    ap.add_argument("--data", type=Path, help="prepared views3d dataset (default: a small temp one at 64 px)")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    device = resolve_device(args.device)
    threads = torch.get_num_threads()
    machine = torch.cuda.get_device_name() if device.type == "cuda" else f"{platform.machine()} CPU, {threads} threads"
    with tempfile.TemporaryDirectory() as tmp:
        if args.data:
            data = PreparedDataset(args.data)
        else:
            from ctxssl_cli.data.synthetic import prepare_synthetic

            prepare_synthetic(Path(tmp) / "s", classes=10, objects_per_class=30, views=4, resolution=64, seed=0,
                              progress=False)
            data = PreparedDataset(Path(tmp) / "s")
        spec = load_spec(args.preset, [f"train.max_steps={args.steps}", f"train.checkpoint_every={max(args.steps // 2, 1)}",
                                       f"train.threads={threads}", "data.workers=0"])
        print(f"machine: {machine}; preset {args.preset}: batch {spec.train.batch_size} pairs, "
              f"{spec.data.resolution or data.resolution} px from {data.resolution} px data; {args.steps} steps each")
        bare = bare_rate(spec, data, device, args.steps)
        print(f"bare step: {bare:.1f} pairs/s")
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            summary = pretrain(spec, data, Path(tmp) / "run", DistInfo(device=device))
        loop = float(summary["pairs_per_s"])
        print(f"training loop: {loop:.1f} pairs/s ({summary['final_step']} steps, checkpoints included)")
    print(f"loop_efficiency: {loop / bare:.3f}")


if __name__ == "__main__":
    main()

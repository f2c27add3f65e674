"""`torch.compile` (inductor) against eager for the training step, side by side in one process.

    python benchmarks/compile_step.py [--device auto|cpu|cuda] [--steps 4] [--paper-batch 64] [--only paper|demo]

For the paper architecture (rotcolor: ResNet-18 at 128 px, 3 x 2048 transformer; reduced batch) and the demo
preset: two copies of the model with the same initial weights, one called as it is and one through
`torch.compile`, each with its own Adam, run the step training runs (train/step.py compute_loss: forward,
InfoNCE + aux loss, backward, optimiser) on the same batches. The first compiled step is timed on its own (it
includes the compilation, with whatever inductor cache this machine has), then the eager and compiled steps
alternate, `--steps` timed steps each, so that both see the same machine load. Printed per configuration:
first-step seconds of each, pairs/s of each, the largest difference of their losses (compiled kernels may sum
in another order), and `compile_speedup: X` (compiled pairs/s / eager pairs/s). Nothing here is a timed test.
"""

from __future__ import annotations

import argparse
import copy
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ctxssl_cli.data.pairs import PairSampler  # noqa: E402
from ctxssl_cli.data.prepared import PreparedDataset  # noqa: E402
from ctxssl_cli.data.schema import ACTION_DIM  # noqa: E402
from ctxssl_cli.devices import resolve_device  # noqa: E402
from ctxssl_cli.model.build import build_model  # noqa: E402
from ctxssl_cli.schedule import adam  # noqa: E402
from ctxssl_cli.spec import load_spec  # noqa: E402
from ctxssl_cli.train.dist import DistInfo  # noqa: E402
from ctxssl_cli.train.step import compute_loss, step_mask  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import synthetic_at  # noqa: E402  (a small temp dataset at a resolution)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def compare(name: str, spec, data: PreparedDataset, device: torch.device, steps: int) -> float:
    torch.manual_seed(0)
    eager = build_model(spec, ACTION_DIM).to(device)
    if device.type == "cuda":  # as the training loop sets up a CUDA run
        eager.to(memory_format=torch.channels_last)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    twin = copy.deepcopy(eager)
    compiled = torch.compile(twin)
    sides = {"eager": (eager, eager, adam(eager.parameters(), lr=1e-4)),
             "compiled": (compiled, twin, adam(twin.parameters(), lr=1e-4))}
    sampler = PairSampler(data.split("train"), spec.train.batch_size, 0)
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=device)
    amp = {"bf16": torch.bfloat16, "fp32": None}.get(spec.train.precision,
                                                     torch.bfloat16 if device.type == "cuda" else None)
    n_seq = spec.train.batch_size // spec.pairs_per_seq
    res = spec.data.resolution or data.resolution
    times = {k: [] for k in sides}
    losses = {k: [] for k in sides}

    def step(side: str, i: int) -> None:
        fwd, model, opt = sides[side]
        batch = sampler.batch(0, i % sampler.steps_per_epoch).to(device, non_blocking=True)
        mask = step_mask(spec, i, n_seq, info, device)
        sync(device)
        t0 = time.perf_counter()
        out = compute_loss(fwd, batch, spec, "rotation", mask, info, data.mean, data.std, res, amp)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        sync(device)
        times[side].append(time.perf_counter() - t0)
        losses[side].append(out.loss.item())

    for i in range(steps + 1):  # step 0 of each side (the compilation; eager's first call) is reported apart
        for side in ("eager", "compiled") if i % 2 == 0 else ("compiled", "eager"):
            step(side, i)
    worst = max(abs(a - b) for a, b in zip(losses["eager"], losses["compiled"]))
    eager_ps = steps * spec.train.batch_size / sum(times["eager"][1:])
    comp_ps = steps * spec.train.batch_size / sum(times["compiled"][1:])
    print(f"== {name}: encoder {spec.model.encoder}, {res} px, transformer {spec.model.n_layer}x{spec.model.n_embd}, "
          f"batch {spec.train.batch_size} pairs, {steps} timed steps each, alternating")
    print(f"first step (s): eager {times['eager'][0]:.1f}, compiled {times['compiled'][0]:.1f} (compilation included)")
    print(f"pairs/s: eager {eager_ps:.1f}, compiled {comp_ps:.1f}")
    print(f"largest loss difference eager vs compiled: {worst:.2e}")
    print(f"compile_speedup: {comp_ps / eager_ps:.2f}")
    return comp_ps / eager_ps


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", type=int, default=4, help="timed steps of each side (default 4)")
    ap.add_argument("--paper-batch", type=int, default=64, help="reduced batch for the paper architecture (a multiple of 64 pairs per sequence)")
    ap.add_argument("--only", choices=("paper", "demo"), help="one configuration only")
    args = ap.parse_args(argv)
    device = resolve_device(args.device)
    machine = torch.cuda.get_device_name() if device.type == "cuda" else \
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"machine: {machine}; torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        configs = {"paper": ("paper architecture (reduced batch)",
                             load_spec("rotcolor", [f"train.batch_size={args.paper_batch}", "data.workers=0"]), 128),
                   "demo": ("demo preset", load_spec("demo"), 64)}
        for key, (name, spec, res) in configs.items():
            if args.only in (None, key):
                compare(name, spec, synthetic_at(res, Path(tmp)), device, args.steps)


if __name__ == "__main__":
    main()

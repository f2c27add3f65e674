"""Training-step throughput and where the time goes, for the paper architecture and the demo preset.

    python benchmarks/train_step.py [--data PREPARED_DIR] [--device auto|cpu|cuda] [--steps 5]
    python benchmarks/train_step.py --contended [--steps 300]   (benchmarks/contention.py: beside a busy process)
    python benchmarks/train_step.py --reference DIR [--steps 10] [--paper-steps 3]
                                     (benchmarks/reference_step.py: against the published code, checked out in DIR)

For each configuration it prints pairs/s, the share of step time in data / encoder forward / transformer
forward / loss / backward / optimiser, and `mfu:` = achieved model FLOP/s (model_flops_per_pair x pairs/s)
divided by this machine's large-matmul FLOP/s in the same dtype, measured in the same run.
Without --data a small synthetic dataset is rendered into a temp folder at each configuration's resolution.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from ctxssl_cli.data.pairs import PairSampler, to_model_input
from ctxssl_cli.data.prepared import PreparedDataset
from ctxssl_cli.losses import aux_loss, info_nce
from ctxssl_cli.train.dist import DistInfo
from ctxssl_cli.train.step import step_mask
from ctxssl_cli.model.flops import model_flops_per_pair
from ctxssl_cli.spec import load_spec
from ctxssl_cli.devices import resolve_device
from ctxssl_cli.model.build import build_model
from ctxssl_cli.schedule import adam
from ctxssl_cli.data.schema import ACTION_DIM, revealed_mask


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_flops(device, dtype, n=2048, reps=10) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - t0)


def bench(name, spec, data: PreparedDataset, device, steps: int, peak: float, amp):
    res = spec.data.resolution or data.resolution
    torch.manual_seed(0)
    model = build_model(spec, ACTION_DIM).to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    opt = adam(model.parameters(), lr=1e-4)  # as the training loop builds it
    sampler = PairSampler(data.split("train"), spec.train.batch_size, 0)
    n_pairs = spec.pairs_per_seq
    n_seq = spec.train.batch_size // n_pairs
    revealed = revealed_mask("rotation", ACTION_DIM, device)
    single = DistInfo(rank=0, world_size=1, local_rank=0, device=device)
    phases = dict.fromkeys(["data", "encoder", "transformer", "loss", "backward", "optimiser"], 0.0)
    total_t = 0.0
    for step in range(steps + 1):  # step 0 warms up and is not counted
        t = {}
        sync(device)
        t0 = time.perf_counter()
        b = sampler.batch(0, step % sampler.steps_per_epoch).to(device, non_blocking=True)
        x = to_model_input(b.x, data.mean, data.std, res)
        y = to_model_input(b.y, data.mean, data.std, res)
        mask = step_mask(spec, step, n_seq, single, device)  # the spec's mask draw, as training makes it
        sync(device)
        t["data"] = time.perf_counter()
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            h = model.encode(torch.cat([x, y]))
            sync(device)
            t["encoder"] = time.perf_counter()
            h_x, h_y = h.chunk(2)
            z_x, z_y = model.forward_pairs(h_x, h_y, b.action * revealed, n_pairs, mask)
            sync(device)
            t["transformer"] = time.perf_counter()
        z_x, z_y = z_x.float(), z_y.float()
        loss = info_nce(z_x, z_y, 0.1, clamp=spec.train.nce_clamp) + 5.0 * 0.5 * (
            aux_loss(model.predict_latents(z_x).float(), b.target_y, revealed)
            + aux_loss(model.predict_latents(z_y).float(), b.target_y, revealed))
        sync(device)
        t["loss"] = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sync(device)
        t["backward"] = time.perf_counter()
        opt.step()
        sync(device)
        t["optimiser"] = time.perf_counter()
        if step:
            prev = t0
            for k in phases:
                phases[k] += t[k] - prev
                prev = t[k]
            total_t += t["optimiser"] - t0
    pairs_s = steps * spec.train.batch_size / total_t
    flops = model_flops_per_pair(model, res, n_pairs)
    print(f"== {name}: encoder {spec.model.encoder}, {res} px, transformer {spec.model.n_layer}x{spec.model.n_embd}, "
          f"{n_pairs} pairs/seq, batch {spec.train.batch_size} pairs, {steps} timed steps")
    print(f"pairs/s: {pairs_s:.1f}")
    print("time share: " + ", ".join(f"{k} {100 * v / total_t:.1f}%" for k, v in phases.items()))
    print(f"model GFLOP/pair (fwd+bwd): {flops / 1e9:.3f}; achieved TFLOP/s: {flops * pairs_s / 1e12:.4f}")
    print(f"mfu: {flops * pairs_s / peak:.3f}")


def synthetic_at(res: int, tmp: Path) -> PreparedDataset:
    from ctxssl_cli.data.synthetic import prepare_synthetic

    root = tmp / f"s{res}"
    prepare_synthetic(root, classes=10, objects_per_class=30, views=4, resolution=res, seed=0, progress=False)
    return PreparedDataset(root)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, help="prepared dataset (default: render small temp ones)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", type=int, help="timed steps (default 5; --reference: 10; --contended: 300)")
    ap.add_argument("--paper-batch", type=int, default=64, help="reduced batch for the paper architecture")
    ap.add_argument("--contended", action="store_true",
                    help="instead: demo training beside a second busy process (benchmarks/contention.py)")
    ap.add_argument("--reference", type=Path, metavar="DIR",
                    help="instead: our step against the published code's, side by side (benchmarks/reference_step.py;"
                         " DIR: git clone https://github.com/Sharut/In-Context-Symmetries DIR)")
    ap.add_argument("--malloc", choices=("keep", "system"), default="keep",
                    help="keep: freed memory stays in the heap, as `ctxssl` sets it (ctxssl_cli/allocator.py); "
                         "system: glibc's defaults (a page fault for every page of every large block)")
    args, rest = ap.parse_known_args()
    if args.malloc == "keep":
        from ctxssl_cli.allocator import keep_freed_memory

        print(f"allocator: freed memory kept in the heap ({'set' if keep_freed_memory() else 'not available here'})")
    else:
        print("allocator: glibc's defaults")
    if args.reference:
        if args.data or args.contended:
            ap.error("--reference runs on random inputs of its own: drop --data and --contended")
        sys.path.insert(0, str(Path(__file__).parent))
        import reference_step

        return reference_step.main([str(args.reference), "--device", args.device, "--paper-batch",
                                    str(args.paper_batch), *rest,
                                    *(["--steps", str(args.steps)] if args.steps is not None else [])])
    if args.contended:
        sys.path.insert(0, str(Path(__file__).parent))
        import contention

        sys.argv = [sys.argv[0], *rest, *(["--steps", str(args.steps)] if args.steps is not None else [])]
        return contention.main()
    if rest:
        ap.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.steps is None:
        args.steps = 5
    device = resolve_device(args.device)
    amp = torch.bfloat16 if device.type == "cuda" else None
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    peak = matmul_flops(device, amp or torch.float32)
    machine = torch.cuda.get_device_name() if device.type == "cuda" else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"machine: {machine}; matmul peak ({'bf16' if amp else 'fp32'}): {peak / 1e12:.3f} TFLOP/s")
    with tempfile.TemporaryDirectory() as tmp:
        paper = load_spec("rotcolor", [f"train.batch_size={args.paper_batch}", "data.workers=0"])
        demo = load_spec("demo")
        for name, spec in (("paper architecture (reduced batch)", paper), ("demo preset", demo)):
            data = PreparedDataset(args.data) if args.data else synthetic_at(128 if spec is paper else 64, Path(tmp))
            bench(name, spec, data, device, args.steps, peak, amp)


if __name__ == "__main__":
    main()

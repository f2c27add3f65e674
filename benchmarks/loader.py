"""Data-loading benchmark: training pairs/s of the prepared-format reader against the published code's path.

    python benchmarks/loader.py --raw RAW_DIR --prepared PREP_DIR [--batch 256] [--seconds 10] [--threads 1]

RAW_DIR is a 3DIEBench-layout folder (SYNSET/OBJ_ID/image_i.jpg, 256 px), PREP_DIR the same data packed by
`ctxssl prepare 3diebench` (e.g. at 128 px). Both readers produce the same thing, in the same process, one
after the other in one run: batches of B training pairs (two distinct views of one object) as normalised
float32 tensors (B, 3, r, r), r = the prepared resolution.
- naive: the published SIE/ContextSSL data path: per view, open one JPEG with PIL, convert to RGB,
  torchvision Resize((r, r)) + ToTensor + Normalize, then stack.
- ours: PairSampler.batch (memory-mapped uint8 gather or JPEG decode from chunk files) + to_model_input.
torch runs on --threads threads for both (default 1: one loader process; scale with DataLoader workers).
The last line is `speedup_vs_pil: X` (ours / naive pairs per second).

Both readers end in the same fresh float32 batch (2 x B x 3 x r x r x 4 bytes: 100 MB at B=256, r=128). With
glibc's defaults it is mapped anew for every batch, and its page faults dominate our reader's time on machines
with slow faults (VMs). `ctxssl` keeps freed memory in its heap (ctxssl_cli/allocator.py), and so does this
benchmark, for both readers in its one process (`--malloc keep`, the default); `--malloc system` measures with
glibc's defaults.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ctxssl_cli.data.pack3diebench import IMAGE_RE, _scan_folder  # noqa: E402
from ctxssl_cli.data.pairs import PairSampler, to_model_input  # noqa: E402
from ctxssl_cli.data.prepared import PreparedDataset  # noqa: E402


def naive_reader(raw_dir: Path, resolution: int, mean, std, batch: int, seed: int = 0):
    """The published code's Dataset.__getitem__, batched: one PIL open + resize + normalise per view."""
    from PIL import Image
    from torchvision import transforms

    keys, locate = _scan_folder(raw_dir)
    folders = [Path(locate(k)[1]) for k in keys]
    n_views = sum(1 for f in folders[0].iterdir() if IMAGE_RE.fullmatch(f.name))
    tf = transforms.Compose([transforms.Resize((resolution, resolution)), transforms.ToTensor(),
                             transforms.Normalize(mean, std)])
    rng = np.random.default_rng(seed)

    def load(path):
        with open(path, "rb") as f:
            return tf(Image.open(f).convert("RGB"))

    def next_batch():
        xs, ys = [], []
        for i in rng.integers(0, len(folders), batch):
            v1, v2 = rng.choice(n_views, 2, replace=False)
            xs.append(load(folders[i] / f"image_{v1}.jpg"))
            ys.append(load(folders[i] / f"image_{v2}.jpg"))
        return torch.stack(xs), torch.stack(ys)

    return next_batch


def our_reader(prep_dir: Path, batch: int, seed: int = 0):
    ds = PreparedDataset(prep_dir)
    split = ds.split("train")
    sampler = PairSampler(split, global_batch_size=min(batch, split.n_objects), seed=seed)
    state = {"epoch": 0, "step": 0}

    def next_batch():
        b = sampler.batch(state["epoch"], state["step"])
        state["step"] += 1
        if state["step"] == sampler.steps_per_epoch:
            state["epoch"], state["step"] = state["epoch"] + 1, 0
        return to_model_input(b.x, ds.mean, ds.std), to_model_input(b.y, ds.mean, ds.std)

    return next_batch, ds, sampler.global_batch_size


def measure(readers: dict, seconds: float, rounds: int = 4) -> dict:
    """Pairs/s per reader, interleaved in `rounds` rounds of seconds/rounds each, so that a change in machine
    load during the run hits both readers alike."""
    counts, times, shapes = dict.fromkeys(readers, 0), dict.fromkeys(readers, 0.0), {}
    for name, next_batch in readers.items():
        x, _ = next_batch()  # warm-up (imports, page cache, memory maps)
        shapes[name] = (tuple(x.shape), x.dtype)
    for _ in range(rounds):
        for name, next_batch in readers.items():
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < seconds / rounds:
                x, y = next_batch()
                counts[name] += x.shape[0]
            times[name] += time.perf_counter() - t0
    assert len(set(shapes.values())) == 1, shapes  # the same product: (B, 3, r, r) float32, normalised
    return {name: counts[name] / times[name] for name in readers}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--raw", type=Path, required=True, help="3DIEBench-layout folder (256-px JPEGs)")
    ap.add_argument("--prepared", type=Path, required=True, help="the same data, prepared (e.g. 128 px)")
    ap.add_argument("--batch", type=int, default=256, help="pairs per batch")
    ap.add_argument("--seconds", type=float, default=10.0, help="measuring time per reader (interleaved in 4 rounds)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for both readers")
    ap.add_argument("--malloc", choices=("keep", "system"), default="keep",
                    help="keep: freed memory stays in the heap for both readers, as `ctxssl` sets it for its own "
                         "process (ctxssl_cli/allocator.py); system: glibc's defaults")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.malloc == "keep":
        from ctxssl_cli.allocator import keep_freed_memory

        kept = keep_freed_memory()
    else:
        kept = False

    ours, ds, batch = our_reader(args.prepared, args.batch)
    naive = naive_reader(args.raw, ds.resolution, ds.mean, ds.std, batch)
    print(f"prepared: {args.prepared} (codec {ds.codec}, {ds.resolution} px, {ds.n_views} views); raw: {args.raw}; "
          f"batch {batch} pairs; {args.seconds:g} s each; torch threads {args.threads}; allocator: "
          f"{'freed memory kept (both readers)' if kept else 'glibc defaults'}")
    rates = measure({"naive": naive, "ours": ours}, args.seconds)
    rate_naive, rate_ours = rates["naive"], rates["ours"]
    print(f"naive (PIL, one JPEG file per view): {rate_naive:10.1f} pairs/s")
    print(f"ours  (prepared, {ds.codec:4s} codec):       {rate_ours:10.1f} pairs/s")
    print(f"speedup_vs_pil: {rate_ours / rate_naive:.1f}")


if __name__ == "__main__":
    main()

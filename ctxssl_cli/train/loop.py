"""The pretraining loop: setup in short sections, one step at a time, exact resume (SPEC §2, §6).

Every random choice is a pure function of (train.seed, step): the pairs of a step (PairSampler), its
environment and its context mask. Together with the model/optimiser state in the checkpoint this makes
`--resume` continue bit for bit on CPU after a crash or kill -9.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader

from ctxssl_cli import __version__
from ctxssl_cli.checkpoint import (CHECKPOINT_NAME, load_checkpoint, restore_model, restore_optimizer,
                                   restore_rng, save_checkpoint)
from ctxssl_cli.data.pairs import PairBatchDataset, PairSampler
from ctxssl_cli.data.prepared import PreparedDataset
from ctxssl_cli.errors import CtxsslError, NonFiniteLossError
from ctxssl_cli.fileio import atomic_write_text
from ctxssl_cli.data.schema import ACTION_DIM
from ctxssl_cli.model.build import build_model
from ctxssl_cli.spec import RunSpec, spec_from_yaml_text, stored_meta, to_yaml
from ctxssl_cli.train import dist as D
from ctxssl_cli.schedule import warmup_cosine
from ctxssl_cli.train.step import compute_loss, sample_env, step_mask

SPEC_NAME = "spec.yaml"
METRICS_NAME = "metrics.jsonl"
LOG_NAME = "train.log"
# Keys that may differ between the stored spec and the command line on --resume (they change how long or how
# the run is observed, not what one step computes).
RESUMABLE_CHANGES = {"train.epochs", "train.max_steps", "train.checkpoint_every", "train.log_every",
                     "data.workers", "data.path"}


def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_meta(spec: RunSpec, data: PreparedDataset, resolution: int, device: torch.device, world: int) -> dict:
    return {
        "data_path": str(data.root.resolve()),
        "data_manifest_sha256": data.manifest_sha256,
        "resolution": resolution,
        "n_classes": len(data.classes),
        "action_dim": ACTION_DIM,
        "mean": [float(v) for v in data.mean],
        "std": [float(v) for v in data.std],
        "git_sha": git_sha(),
        "ctxssl_version": __version__,
        "torch_version": str(torch.__version__),
        "python": sys.version.split()[0],
        "device": str(device),
        "world_size": world,
    }


def diff_specs(a: RunSpec, b: RunSpec) -> list[str]:
    da, db = a.to_dict(), b.to_dict()
    keys = []
    for sec in ("data", "model", "train"):
        for k in da[sec]:
            if da[sec][k] != db[sec][k]:
                keys.append(f"{sec}.{k}")
    return keys


@dataclass
class Logger:
    """Rank 0 writes one JSON line per logged step (metrics.jsonl) and plain text (train.log)."""

    run_dir: Path
    enabled: bool

    def metrics(self, row: dict) -> None:
        if self.enabled:
            with open(self.run_dir / METRICS_NAME, "a") as f:
                f.write(json.dumps(row) + "\n")

    def text(self, msg: str) -> None:
        if self.enabled:
            with open(self.run_dir / LOG_NAME, "a") as f:
                f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}\n")


class _StopFlag:
    """SIGINT/SIGTERM set a flag that the loop reads between steps (a step is never cut in half)."""

    def __init__(self):
        self.set = False
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. inside some test runners)
                pass
        return self

    def _handle(self, signum, frame):
        if self.set:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.set = True

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def prepare_run_dir(run_dir: Path, spec: RunSpec, resume: bool, data: PreparedDataset | None = None) -> RunSpec:
    """Check the run folder against --resume (and, when resuming, `data` against the dataset the checkpoint
    was trained on); returns the spec to train with."""
    ckpt = run_dir / CHECKPOINT_NAME
    if resume:
        if not ckpt.is_file():
            raise CtxsslError(f"--resume: {run_dir} holds no {CHECKPOINT_NAME}",
                              "check --out, or drop --resume to start a new run")
        stored_yaml = load_checkpoint(ckpt, verify=False).spec_yaml
        stored = spec_from_yaml_text(stored_yaml)
        changed = [k for k in diff_specs(stored, spec) if k not in RESUMABLE_CHANGES]
        if changed:
            raise CtxsslError(f"--resume: the command's spec differs from the run's in {', '.join(changed)}",
                              f"resume with the run's spec ({run_dir / SPEC_NAME}) or start a new run")
        trained_on = stored_meta(stored_yaml).get("data_manifest_sha256")
        if data is not None and trained_on and trained_on != data.manifest_sha256:
            raise CtxsslError(f"--resume: the dataset {data.root} is not the one {ckpt} was trained on (the manifests "
                              "differ: another dataset, or this one rendered or packed again since)",
                              "resume with the run's dataset (--data DIR), or start a new run on this one")
        return spec
    if ckpt.exists():
        raise CtxsslError(f"{run_dir} already holds a run", "pass --resume to continue it, or choose another --out")
    # a folder from a start that failed before its first checkpoint: begin again from a clean log
    for name in (METRICS_NAME, LOG_NAME):
        (run_dir / name).unlink(missing_ok=True)
    return spec


def pretrain(spec: RunSpec, data: PreparedDataset, run_dir: Path, info: D.DistInfo, resume: bool = False,
             compile_model: bool = False, progress=None) -> dict:
    """Train `spec` on `data`, writing to `run_dir`. Returns a summary dict (steps, final loss, pairs/s)."""
    # ---- run folder and spec -------------------------------------------------------------------------
    spec = prepare_run_dir(run_dir, spec, resume, data)
    device, t = info.device, spec.train
    resolution = spec.data.resolution or data.resolution
    if spec.model.sync_bn and info.distributed and device.type != "cuda":
        raise CtxsslError("model.sync_bn needs CUDA GPUs (PyTorch's SyncBatchNorm has no CPU kernel)",
                          "set --set model.sync_bn=false for CPU runs")
    train_split = data.split("train")
    meta = run_meta(spec, data, resolution, device, info.world_size)
    spec_yaml = to_yaml(spec, meta)

    # ---- data: a pure function of (seed, epoch, step); each rank reads its own slice ---------------------
    if t.batch_size % (info.world_size * spec.pairs_per_seq):
        raise CtxsslError(f"train.batch_size ({t.batch_size}) must split into whole sequences of "
                          f"{spec.pairs_per_seq} pairs on each of {info.world_size} ranks",
                          f"use a multiple of {info.world_size * spec.pairs_per_seq}")
    sampler = PairSampler(train_split, t.batch_size, t.seed, info.rank, info.world_size, spec.data.canonical_quat)
    spe = sampler.steps_per_epoch
    total = spe * t.epochs if t.epochs else t.max_steps
    if t.max_steps:
        total = min(total, t.max_steps)
    n_seq_global = t.batch_size // spec.pairs_per_seq
    log = Logger(run_dir, info.is_main)
    if info.is_main:  # the folder is written only once the inputs are known to be good
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / SPEC_NAME, spec_yaml)
        log.text(f"{'resume' if resume else 'start'}: git {meta['git_sha']}, device {device}, world {info.world_size}")
        log.text("spec:\n" + spec_yaml)

    # ---- model, optimiser, schedule ------------------------------------------------------------------
    torch.manual_seed(t.seed)
    model = build_model(spec, action_dim=ACTION_DIM)
    if spec.model.sync_bn and info.distributed:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    peak_lr = t.lr * t.batch_size / 256
    opt = torch.optim.Adam(model.parameters(), lr=peak_lr, weight_decay=t.weight_decay,
                           **({"fused": True} if device.type == "cuda" else {}))
    lrs = warmup_cosine(peak_lr, total, round(t.warmup_epochs * spe))
    start = 0
    if resume:
        ckpt = load_checkpoint(run_dir / CHECKPOINT_NAME)
        restore_model(model, ckpt)
        restore_optimizer(opt, ckpt)
        restore_rng(ckpt)
        start = ckpt.step
        log.text(f"resumed from step {start}")
    fwd = model
    if info.distributed:
        fwd = DDP(fwd, device_ids=[device.index] if device.type == "cuda" else None)
    if compile_model:
        fwd = torch.compile(fwd)
    amp = {"bf16": torch.bfloat16, "fp32": None}.get(t.precision, torch.bfloat16 if device.type == "cuda" else None)

    def save(step: int) -> None:
        if info.is_main:
            save_checkpoint(run_dir / CHECKPOINT_NAME, model, opt, spec_yaml,
                            {"step": step, "epoch": step // spe, "steps_per_epoch": spe, "total_steps": total})

    # ---- loop ----------------------------------------------------------------------------------------
    summary = {"start_step": start, "total_steps": total, "steps_per_epoch": spe, "run_dir": str(run_dir)}
    step, last, t0, pairs_done = start, {}, time.perf_counter(), 0
    task = progress.add_task("pretrain", total=total, completed=start) if progress is not None else None
    stopping = False
    with _StopFlag() as stop:
        while step < total:
            epoch, in_epoch = divmod(step, spe)
            loader = DataLoader(PairBatchDataset(sampler, epoch, in_epoch), batch_size=None,
                                num_workers=spec.data.workers, pin_memory=device.type == "cuda",
                                **({"prefetch_factor": 4, "persistent_workers": False} if spec.data.workers else {}))
            for batch in loader:
                batch = batch.to(device, non_blocking=True)
                env = sample_env(t.envs, t.seed, step)
                for g in opt.param_groups:
                    g["lr"] = float(lrs[step])
                mask = step_mask(spec, step, n_seq_global, info, device)
                out = compute_loss(fwd, batch, spec, env, mask, info, data.mean, data.std, resolution, amp)
                if not math.isfinite(out.loss.item()):
                    raise NonFiniteLossError(
                        f"loss became {out.loss.item()} at step {step} (env {env}); the last good checkpoint "
                        f"is kept in {run_dir}", "lower train.lr or set train.grad_clip, then --resume")
                opt.zero_grad(set_to_none=True)
                out.loss.backward()
                if t.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
                opt.step()
                step += 1
                pairs_done += t.batch_size
                rate = pairs_done / max(time.perf_counter() - t0, 1e-9)
                last = {"step": step, "epoch": epoch, "env": env, "loss": out.loss.item(), "nce": out.nce.item(),
                        "aux": out.aux.item(), "aux_r2": out.aux_r2, "lr": float(lrs[step - 1]),
                        "pairs_per_s": rate}
                if step % t.log_every == 0 or step == total:
                    log.metrics(last)
                if progress is not None:
                    progress.update(task, completed=step, description=(
                        f"ep {epoch} {env[:3]} loss {last['loss']:.3f} (nce {last['nce']:.3f} aux {last['aux']:.3f}"
                        f" r2 {last['aux_r2']:+.2f}) {rate:,.0f} pairs/s"))
                if step % t.checkpoint_every == 0 or step == total:
                    save(step)
                stopping = D.broadcast_flag(stop.set, info)  # the same answer on every rank
                if stopping or step >= total:
                    break
            if stopping:
                if step % t.checkpoint_every:
                    save(step)
                log.text(f"interrupted at step {step}; checkpoint saved")
                summary.update(interrupted=True)
                break
    summary.update(last)
    summary["final_step"] = step
    log.text(f"done: {json.dumps(summary)}")
    return summary


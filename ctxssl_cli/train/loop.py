"""The pretraining loop: setup in short sections, one step at a time, exact resume (SPEC §2, §6).

Every random choice is a pure function of (train.seed, step): the pairs of a step (PairSampler), its
environment and its context mask. Together with the model/optimiser state in the checkpoint this makes
`--resume` continue bit for bit on CPU after a crash or kill -9.
"""

from __future__ import annotations

import contextlib
import json
import math
import shlex
import shutil
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
from ctxssl_cli.curves import CURVES_NAME, write_curves
from ctxssl_cli.progress import Progress
from ctxssl_cli.train.threads import ThreadGovernor
from ctxssl_cli.data.augment2d import AugmentPairSampler, settings_from
from ctxssl_cli.data.schema import VIEWS3D, ActionSchema, check_same_schema, schema_from_manifest, schema_of_run
from ctxssl_cli.model.build import build_model, standard_units
from ctxssl_cli.spec import OPTIMISATION_KEYS, RunSpec, spec_from_yaml_text, stored_meta, to_yaml
from ctxssl_cli.train import dist as D
from ctxssl_cli.schedule import adam, warmup_cosine
from ctxssl_cli.train.step import compute_loss, compute_method_loss, sample_env, step_mask

SPEC_NAME = "spec.yaml"
METRICS_NAME = "metrics.jsonl"
LOG_NAME = "train.log"
TENSORBOARD_DIR = "tensorboard"  # --log tensorboard: event files of the metrics, for `tensorboard --logdir`
# Keys that may differ between the stored spec and the command line on --resume (they change how long or how
# the run is observed, not what one step computes).
RESUMABLE_CHANGES = {"train.epochs", "train.max_steps", "train.checkpoint_every", "train.log_every",
                     "train.threads", "data.workers", "data.path"}
# What a run folder may hold: the files the trainer writes and the folders embed/evaluate add to it.
RUN_ENTRIES = {SPEC_NAME, CHECKPOINT_NAME, METRICS_NAME, LOG_NAME, CURVES_NAME, TENSORBOARD_DIR, "embeddings", "eval"}


def resume_command(run_dir: Path, extra: list[str] | None = None, device: str = "auto") -> str:
    """The command that continues a run exactly: its own spec.yaml as the preset (it holds every --set the run
    was started with and its dataset path), the run folder, --resume."""
    cmd = ["ctxssl", "pretrain", "--preset", str(Path(run_dir) / SPEC_NAME), "--out", str(run_dir), "--resume"]
    if device != "auto":
        cmd += ["--device", device]
    return shlex.join(cmd + list(extra or []))


def resume_hint(run_dir: Path, lr: float) -> str:
    return resume_command(run_dir, ["--set", f"train.lr={lr / 10:g}", "--set", "train.grad_clip=1.0"])


def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_meta(spec: RunSpec, data: PreparedDataset, resolution: int, device: torch.device, world: int,
             changes: list | None = None) -> dict:
    schema = schema_from_manifest(data.manifest)
    return {
        "data_path": str(data.root.resolve()),
        "data_manifest_sha256": data.manifest_sha256,
        "resolution": resolution,
        "n_classes": len(data.classes),
        "action_dim": schema.dim,
        "action_schema": schema.to_manifest(),
        "mean": [float(v) for v in data.mean],
        "std": [float(v) for v in data.std],
        "git_sha": git_sha(),
        "ctxssl_version": __version__,
        "torch_version": str(torch.__version__),
        "python": sys.version.split()[0],
        "device": str(device),
        "world_size": world,
        "changes": list(changes or []),  # spec keys changed on --resume: {step, key, from, to}
    }


def diff_specs(a: RunSpec, b: RunSpec) -> list[str]:
    """The dotted keys whose values differ ("method" first when the methods do: nothing else then compares)."""
    if a.method != b.method:
        return ["method"]
    da, db = a.to_dict(), b.to_dict()
    keys = []
    for sec in ("data", "model", "train", *([] if a.is_contextssl else [a.method])):
        for k in da[sec]:
            if da[sec][k] != db[sec][k]:
                keys.append(f"{sec}.{k}")
    return keys


@dataclass
class Logger:
    """Rank 0 writes one JSON line per logged step (metrics.jsonl) and plain text (train.log); with `tensorboard`
    also TensorBoard scalars (RUN/tensorboard; the optional `tensorboard` package)."""

    run_dir: Path
    enabled: bool
    tensorboard: object = None  # a torch.utils.tensorboard SummaryWriter, opened by open_tensorboard

    def metrics(self, row: dict) -> None:
        if self.enabled:
            with open(self.run_dir / METRICS_NAME, "a") as f:
                f.write(json.dumps(row) + "\n")
            if self.tensorboard is not None:
                for k, v in row.items():
                    if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                        self.tensorboard.add_scalar(k if k in ("lr", "pairs_per_s") else f"train/{k}", v, row["step"])
                if row.get("env") and isinstance(row.get("aux_r2"), float) and math.isfinite(row["aux_r2"]):
                    self.tensorboard.add_scalar(f"aux_r2/{row['env']}", row["aux_r2"], row["step"])

    def open_tensorboard(self) -> None:
        if self.enabled:
            from torch.utils.tensorboard import SummaryWriter  # checked by check_tensorboard

            self.tensorboard = SummaryWriter(str(self.run_dir / TENSORBOARD_DIR))

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None

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


def _is_ours(entry: Path) -> bool:
    """An entry a ctxssl run folder may hold: its files, embed/evaluate outputs, our temp files."""
    return entry.name in RUN_ENTRIES or (entry.name.startswith(".") and ".tmp-" in entry.name)


def claim_run_dir(run_dir: Path, resume: bool, overwrite: bool = False, remove: bool = True) -> None:
    """Decide what may happen to `run_dir` before any work (no dataset is rendered for a folder we refuse).

    --resume needs a checkpoint. A new run needs a new or empty folder, or one left by a start that failed before
    its first checkpoint; a folder holding a run is replaced only with `overwrite` (its files are removed here
    unless `remove` is False: a check only); a folder holding anything that is not a ctxssl run is never written
    into.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise CtxsslError(f"--out {run_dir} is a file, not a folder", "choose a folder path for --out")
    entries = sorted(run_dir.iterdir()) if run_dir.is_dir() else []
    foreign = [e.name for e in entries if not _is_ours(e)]
    if foreign:
        raise CtxsslError(f"--out {run_dir} holds files that are not part of a ctxssl run "
                          f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''})",
                          "choose an empty or new folder for --out; ctxssl never overwrites files it did not write")
    ckpt = run_dir / CHECKPOINT_NAME
    if resume:
        if overwrite:
            raise CtxsslError("--resume and --overwrite contradict each other",
                              "pass --resume to continue the run, or --overwrite to start it again")
        if not ckpt.is_file():
            raise CtxsslError(f"--resume: {run_dir} holds no {CHECKPOINT_NAME}",
                              "check --out, or drop --resume to start a new run")
        return
    if ckpt.exists():
        if not overwrite:
            pos = load_checkpoint(ckpt, verify=False).meta
            state = ("a finished run" if pos.get("step") == pos.get("total_steps")
                     else f"a run stopped at step {pos.get('step')} of {pos.get('total_steps')}")
            raise CtxsslError(f"{run_dir} already holds a run ({state})",
                              "pass --resume to continue it, --overwrite to replace it, or choose another --out")
        for e in entries if remove else ():
            shutil.rmtree(e) if e.is_dir() else e.unlink()


def prepare_run_dir(run_dir: Path, spec: RunSpec, resume: bool, data: PreparedDataset | None = None,
                    overwrite: bool = False) -> list:
    """Check the run folder against --resume (and, when resuming, `spec` and `data` against what the checkpoint
    was trained with). Returns the run's spec-change history (meta.changes), with this resume's changes added."""
    claim_run_dir(run_dir, resume, overwrite)
    ckpt = run_dir / CHECKPOINT_NAME
    if resume:
        stored_ckpt = load_checkpoint(ckpt, verify=False)
        stored_yaml = stored_ckpt.spec_yaml
        stored = spec_from_yaml_text(stored_yaml)
        changed_keys = diff_specs(stored, spec)
        changed = [k for k in changed_keys if k not in RESUMABLE_CHANGES | OPTIMISATION_KEYS]
        if changed:
            raise CtxsslError(f"--resume: the command's spec differs from the run's in {', '.join(changed)}",
                              f"resume with the run's spec (--preset {run_dir / SPEC_NAME}) or start a new run; "
                              f"--resume may change only {', '.join(sorted(RESUMABLE_CHANGES | OPTIMISATION_KEYS))}")
        meta = stored_meta(stored_yaml)
        trained_on = meta.get("data_manifest_sha256")
        if data is not None and trained_on and trained_on != data.manifest_sha256:
            raise CtxsslError(f"--resume: the dataset {data.root} is not the one {ckpt} was trained on (the manifests "
                              "differ: another dataset, or this one rendered or packed again since)",
                              "resume with the run's dataset (--data DIR), or start a new run on this one")
        old, new = stored.to_dict(), spec.to_dict()
        step = stored_ckpt.step
        return list(meta.get("changes") or []) + [
            {"step": step, "key": k, "from": old[k.split(".")[0]][k.split(".")[1]],
             "to": new[k.split(".")[0]][k.split(".")[1]]}
            for k in changed_keys if k in OPTIMISATION_KEYS | {"train.epochs"}]
    # a folder from a start that failed before its first checkpoint: begin again from a clean log
    for name in (METRICS_NAME, LOG_NAME):
        (run_dir / name).unlink(missing_ok=True)
    return []


def check_tensorboard() -> None:
    """--log tensorboard needs the optional tensorboard package; say how to get it before any work."""
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        raise CtxsslError("--log tensorboard needs the tensorboard package, which is not installed",
                          "pip install 'ctxssl[tensorboard]' (or pip install tensorboard), or drop --log")


def check_schema(spec: RunSpec, data: PreparedDataset, run_dir: Path, resume: bool) -> ActionSchema:
    """The dataset's action schema, checked against what the spec asks of it (and, on --resume, against the
    schema the run was trained with)."""
    schema = schema_from_manifest(data.manifest)
    if resume:
        from ctxssl_cli.spec import stored_meta

        stored = (run_dir / SPEC_NAME).read_text() if (run_dir / SPEC_NAME).is_file() else ""
        check_same_schema(schema_of_run(stored_meta(stored) or {}), schema, f"run {run_dir}", data.root)
    envs = schema.environments
    bad = [e for e in spec.train.envs if e not in envs] if spec.is_contextssl else []
    if bad:
        raise CtxsslError(f"train.envs names '{bad[0]}', which {data.root} ({schema.name}: "
                          f"{', '.join(schema.factor_names)}) does not have",
                          f"use environments of this dataset: {', '.join(envs)}, e.g. "
                          f"--set train.envs='{{{schema.factor_names[0]}: 0.5, {schema.factor_names[-1]}: 0.5}}'")
    if spec.is_contextssl and spec.model.action_units == "standard":
        standard_units(schema)  # defined for 2D augmentation data: refused here, before the run folder is made
    if schema == VIEWS3D:
        if spec.data.augment:
            raise CtxsslError(f"data.augment sets the 2D view pipeline, but {data.root} ({schema.name}) has stored "
                              "views, which are not augmented",
                              "remove data.augment (from the preset or --set), or train on 2D data (`ctxssl "
                              "prepare cifar10` or `prepare images`)")
        return schema
    if not spec.is_contextssl:
        raise CtxsslError(f"{spec.method} on {schema.name} data ({data.root}) is not supported yet: the baselines' "
                          "predictors read views3d actions (rotation, color)",
                          "train method contextssl on this dataset, or a baseline on views3d data (3DIEBench, "
                          "`ctxssl prepare synthetic`)")
    for key, default in (("aux_rotation", "quaternion"), ("aux_hue", "linear")):
        if getattr(spec.train, key) != default:
            raise CtxsslError(f"train.{key} applies to views3d data; {data.root} is {schema.name}",
                              f"remove --set train.{key} (the aux target is the 9 view parameters)")
    return schema


def nonfinite_state(model: torch.nn.Module) -> str | None:
    """The name of the first parameter or buffer holding NaN/inf, or None when all are finite."""
    for name, t in model.state_dict().items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name
    return None


def _worker_error(e: Exception) -> CtxsslError:
    """A DataLoader worker's exception, re-raised in this process, as one line naming its type and message.

    PyTorch's ExceptionWrapper.reraise rebuilds the worker's exception as `type("Caught <type> in DataLoader
    worker process N. Original Traceback ...")`; a type it cannot rebuild so comes back as another one (a
    CtxsslError, whose `message` is a property, as a TypeError about `message=`). The wrapper is still on the
    traceback: its exc_type and exc_msg (the worker's formatted traceback) are used when present, else this
    exception's own type and text. A CtxsslError from the worker keeps its own fix.
    """
    import re

    kind, text, traced = type(e), str(e), False
    tb = e.__traceback__
    while tb is not None:  # the innermost wrapper (the frame of its reraise) wins
        wrapper = tb.tb_frame.f_locals.get("self")
        if type(wrapper).__name__ == "ExceptionWrapper" and isinstance(getattr(wrapper, "exc_type", None), type):
            kind, text = wrapper.exc_type, str(getattr(wrapper, "exc_msg", text))
        tb = tb.tb_next
    # the traceback's last exception line is "<module>.<qualname>: <message>" ("<qualname>: ..." for builtins)
    name = kind.__qualname__
    if kind.__module__ not in ("builtins", "__main__"):
        name = f"{kind.__module__}.{name}"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    heads = [i for i, ln in enumerate(lines) if ln == name or ln.startswith(name + ": ")]
    if heads:
        msg, traced = " ".join(lines[heads[-1]:])[len(name):].lstrip(":").strip(), True
    else:  # no traceback (a worker killed by a signal): PyTorch's own sentence
        msg = lines[-1] if lines else ""
    msg = msg.split(" Exception raised from ", 1)[0]  # c10's C++ backtrace, when TORCH_SHOW_CPP_STACKTRACES is set
    msg = re.sub(r"\s*[^\s,]+\.(?:cpp|cc|cu|h|hpp):\d+,?", "", msg)  # C++ source locations (decode_jpeg's)
    msg = msg if len(msg) <= 400 else msg[:399] + "…"
    fix = ("check the dataset (re-run `ctxssl prepare` with --overwrite if it is damaged), or set "
           "--set data.workers=0 to read in the main process and see the error there")
    where = "reading a training batch failed in a data-loader worker"
    if issubclass(kind, CtxsslError):
        what, _, own_fix = msg.partition(" — ")
        try:
            return kind(f"{where}: {what}", own_fix or fix)
        except TypeError:  # a subclass with another signature
            return CtxsslError(f"{where}: {what}", own_fix or fix)
    detail = f"{kind.__name__}: {msg}" if traced and msg else (msg or kind.__name__)
    return CtxsslError(f"{where}: {detail}", fix)


def pretrain(spec: RunSpec, data: PreparedDataset, run_dir: Path, info: D.DistInfo, resume: bool = False,
             compile_model: bool = False, progress: bool = False, overwrite: bool = False,
             tensorboard: bool = False) -> dict:
    """Train `spec` on `data`, writing to `run_dir`. Returns a summary dict (steps, final loss, pairs/s).

    `progress`: report progress on stderr (rank 0): a bar on a terminal, else plain lines also written to train.log.
    """
    # ---- run folder and spec -------------------------------------------------------------------------
    changes = prepare_run_dir(run_dir, spec, resume, data, overwrite)
    device, t = info.device, spec.train
    resolution = spec.data.resolution or data.resolution
    if spec.model.sync_bn and info.distributed and device.type != "cuda":
        raise CtxsslError("model.sync_bn needs CUDA GPUs (PyTorch's SyncBatchNorm has no CPU kernel)",
                          "set --set model.sync_bn=false for CPU runs")
    train_split = data.split("train")
    meta = run_meta(spec, data, resolution, device, info.world_size, changes)
    spec_yaml = to_yaml(spec, meta)

    # ---- data: a pure function of (seed, epoch, step); each rank reads its own slice ---------------------
    if spec.is_contextssl and t.batch_size % (info.world_size * spec.pairs_per_seq):
        raise CtxsslError(f"train.batch_size ({t.batch_size}) must split into whole sequences of "
                          f"{spec.pairs_per_seq} pairs on each of {info.world_size} ranks",
                          f"use a multiple of {info.world_size * spec.pairs_per_seq}")
    if not spec.is_contextssl and (t.batch_size % info.world_size or t.batch_size // info.world_size < 2):
        raise CtxsslError(f"train.batch_size ({t.batch_size}) must split into equal parts of at least 2 pairs on "
                          f"each of {info.world_size} ranks (BatchNorm and the losses need 2 per rank)",
                          f"use a multiple of {info.world_size} that is at least {2 * info.world_size}")
    schema = check_schema(spec, data, run_dir, resume)
    if schema == VIEWS3D:
        sampler = PairSampler(train_split, t.batch_size, t.seed, info.rank, info.world_size,
                              spec.data.canonical_quat)
    else:  # views made on the fly from one stored image, rendered on the device (data/augment2d.py)
        sampler = AugmentPairSampler(train_split, t.batch_size, t.seed, info.rank, info.world_size,
                                     settings_from(spec.data.augment))
    spe = sampler.steps_per_epoch
    total = spe * t.epochs if t.epochs else t.max_steps
    if t.max_steps:
        total = min(total, t.max_steps)
    n_seq_global = t.batch_size // spec.pairs_per_seq  # ContextSSL's sequences (unused by the baselines)
    if tensorboard:
        check_tensorboard()
    log = Logger(run_dir, info.is_main)
    if info.is_main:  # the folder is written only once the inputs are known to be good
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / SPEC_NAME, spec_yaml)
        log.text(f"{'resume' if resume else 'start'}: git {meta['git_sha']}, device {device}, world {info.world_size}")
        log.text("spec:\n" + spec_yaml)
        if spec.model.sync_bn and not info.distributed:
            log.text("model.sync_bn ignored: one process (BatchNorm statistics are per process anyway)")

    # ---- model, optimiser, schedule ------------------------------------------------------------------
    torch.manual_seed(t.seed)
    model = build_model(spec, action_dim=schema.dim, schema=schema)
    if spec.model.sync_bn and info.distributed:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    peak_lr = t.lr * t.batch_size / 256
    opt = adam(model.parameters(), lr=peak_lr, weight_decay=t.weight_decay)
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
        bad = nonfinite_state(model)  # never overwrite the last good checkpoint with NaN/inf weights
        if bad is not None:
            raise NonFiniteLossError(
                f"the model's {bad} became non-finite by step {step}; the last good checkpoint is kept in {run_dir}",
                f"lower the learning rate or clip gradients and continue: {resume_hint(run_dir, t.lr)}")
        if info.is_main:
            save_checkpoint(run_dir / CHECKPOINT_NAME, model, opt, spec_yaml,
                            {"step": step, "epoch": step // spe, "steps_per_epoch": spe, "total_steps": total})
            try:  # the picture of the run so far; never a reason to stop training
                write_curves(run_dir)
            except Exception as e:  # noqa: BLE001
                log.text(f"{CURVES_NAME} not drawn: {type(e).__name__}: {e}")

    # ---- loop ----------------------------------------------------------------------------------------
    summary = {"start_step": start, "total_steps": total, "steps_per_epoch": spe, "run_dir": str(run_dir)}
    step, last, t0, pairs_done = start, {}, time.perf_counter(), 0
    stopping = False
    bar = Progress("pretrain", total, completed=start, enabled=progress and info.is_main, log=log.text)
    threads = ThreadGovernor(t.threads, device)
    if device.type == "cpu":
        log.text(f"threads: {torch.get_num_threads()} (" + ("auto: follows the free cores" if threads.active
                                                         else "pinned" if t.threads else "torch's default") + ")")
    if tensorboard:
        log.open_tensorboard()
    with _StopFlag() as stop, bar, contextlib.closing(threads), contextlib.closing(log):
        while step < total:
            epoch, in_epoch = divmod(step, spe)
            loader = DataLoader(PairBatchDataset(sampler, epoch, in_epoch), batch_size=None,
                                num_workers=spec.data.workers, pin_memory=device.type == "cuda",
                                **({"prefetch_factor": 4, "persistent_workers": False} if spec.data.workers else {}))
            batches = iter(loader)
            while True:
                try:
                    batch = next(batches)
                except StopIteration:
                    break
                except (CtxsslError, KeyboardInterrupt):
                    raise
                except Exception as e:
                    if spec.data.workers:
                        raise _worker_error(e) from e
                    raise
                batch = batch.to(device, non_blocking=True)
                env = sample_env(t.envs, t.seed, step) if spec.is_contextssl else None
                for g in opt.param_groups:
                    g["lr"] = float(lrs[step])
                if spec.is_contextssl:
                    mask = step_mask(spec, step, n_seq_global, info, device)
                    out = compute_loss(fwd, batch, spec, env, mask, info, data.mean, data.std, resolution, amp,
                                       schema)
                else:  # a baseline (SPEC §7): no environment, no context mask
                    out = compute_method_loss(fwd, batch, spec, info, data.mean, data.std, resolution, amp)
                if not math.isfinite(out.loss.item()):
                    raise NonFiniteLossError(
                        f"loss became {out.loss.item()} at step {step}{f' (env {env})' if env else ''}; the last "
                        f"good checkpoint is kept in {run_dir}",
                        f"lower the learning rate or clip gradients and continue: {resume_hint(run_dir, t.lr)}")
                opt.zero_grad(set_to_none=True)
                out.loss.backward()
                if t.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
                opt.step()
                step += 1
                pairs_done += t.batch_size
                rate = pairs_done / max(time.perf_counter() - t0, 1e-9)
                if spec.is_contextssl:
                    last = {"step": step, "epoch": epoch, "env": env, "loss": out.loss.item(),
                            "nce": out.nce.item(), "aux": out.aux.item(), "aux_r2": out.aux_r2,
                            "lr": float(lrs[step - 1]), "pairs_per_s": rate}
                    text = (f"{env[:3]} loss {last['loss']:.3f} (nce {last['nce']:.3f} aux {last['aux']:.3f} "
                            f"r2 {last['aux_r2']:+.2f})")
                else:
                    terms = {k: v.item() for k, v in out.terms.items()}
                    last = {"step": step, "epoch": epoch, "loss": out.loss.item(), **terms,
                            "lr": float(lrs[step - 1]), "pairs_per_s": rate}
                    text = f"loss {last['loss']:.3f} ({' '.join(f'{k} {v:.3f}' for k, v in terms.items())})"
                if step % t.log_every == 0 or step == total:
                    log.metrics(last)
                bar.update(step, f"ep {epoch} {text} {rate:,.0f} pairs/s")
                if (change := threads.poll(step)) is not None:
                    log.text(change)
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


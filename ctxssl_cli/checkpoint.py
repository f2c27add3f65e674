"""Checkpoints: safetensors only (never pickle), atomic writes, strict loading, exact-resume state.

One file holds everything `--resume` needs, under named key prefixes:

    model.<name>            the ContextSSL state dict (unwrapped from DDP / torch.compile)
    optim.<i>.<name>        the optimiser's per-parameter state (Adam: step, exp_avg, exp_avg_sq)
    rng.torch_cpu           torch's CPU generator state; rng.cuda.<i> for each CUDA device (i = 0, 1, ..., 10, ...)

and in the safetensors metadata (all strings):

    format                  "ctxssl-checkpoint"
    format_version          "2" (FORMAT_VERSION)
    ctxssl_version          the ctxssl that wrote it
    spec                    the resolved run spec (YAML; its `meta:` block holds the run's recorded facts:
                            data_manifest_sha256, mean/std, action_dim, changes, ...)
    param_groups            the optimiser's param_groups (JSON); absent when no optimiser was saved
    step, epoch, ...        the training position, and any extra metadata of the caller
    content_sha256          see content_hash: a sha256 over every other metadata key and every tensor, checked
                            on load, so that an edited or corrupted file (weights, step, spec, optimiser
                            settings alike) fails loudly instead of training or evaluating on bad state.

Format history: in format 1 the sha256 covered the tensors only, so an edited `step`, spec or param_groups
went unnoticed. Format 2 covers the metadata too. A format-1 checkpoint cannot be verified that way and is
refused (with the fix: train it again, or read it with the ctxssl that wrote it); it is not migrated, since a
re-hash would bless whatever edits it already holds. Embeddings files (embed.py) share read_verified and the
same metadata-plus-tensors hash.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ctxssl_cli import __version__
from ctxssl_cli.errors import CtxsslError
from ctxssl_cli.fileio import commit, discard, os_error_of, tmp_path_for

FORMAT = "ctxssl-checkpoint"
FORMAT_VERSION = "2"  # 2: content_sha256 covers the metadata too (1: tensors only)
MODEL = "model."
OPTIM = "optim."
RNG = "rng."
CHECKPOINT_NAME = "checkpoint.safetensors"
HASH_KEY = "content_sha256"  # the one metadata key the hash does not cover (it holds the hash)


@dataclass
class Checkpoint:
    path: Path
    tensors: dict[str, torch.Tensor]
    meta: dict[str, str]

    @property
    def step(self) -> int:
        return int(self.meta["step"])

    @property
    def spec_yaml(self) -> str:
        return self.meta["spec"]

    def model_state(self) -> dict[str, torch.Tensor]:
        return {k[len(MODEL):]: v for k, v in self.tensors.items() if k.startswith(MODEL)}


def content_hash(tensors: dict[str, torch.Tensor], meta: dict[str, str] | None = None) -> str:
    """sha256 over the metadata and the tensors of a ctxssl safetensors file.

    With `meta`: first every metadata key except content_sha256 itself, as sorted-key JSON (unambiguous
    whatever the values hold), then the tensors. Without it: the tensors only (format 1's hash). Each tensor
    contributes (name, dtype, shape, bytes), in sorted name order.
    """
    return content_hash_items(((name, tensors[name]) for name in sorted(tensors)), meta)


def content_hash_items(items, meta: dict[str, str] | None = None) -> str:
    """content_hash over (name, tensor) pairs given one at a time, already in sorted name order (a file larger
    than memory is hashed tensor by tensor: tensorfile.py)."""
    h = hashlib.sha256()
    if meta is not None:
        covered = {k: meta[k] for k in sorted(meta) if k != HASH_KEY}
        h.update(b"meta|" + json.dumps(covered, sort_keys=True, ensure_ascii=True).encode() + b"|")
    for name, t in items:
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data if t.numel() else b"")
    return h.hexdigest()


def sealed(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> dict[str, str]:
    """`meta` with content_sha256 set to the hash of `meta` and `tensors` (what a writer stores)."""
    meta = {k: v for k, v in meta.items() if k != HASH_KEY}
    return {**meta, HASH_KEY: content_hash(tensors, meta)}


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], str]:
    sd = optimizer.state_dict()
    tensors = {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            if not torch.is_tensor(value):
                value = torch.tensor(value)
            tensors[f"{OPTIM}{idx}.{name}"] = value.detach().cpu().contiguous()
    return tensors, json.dumps(sd["param_groups"])


def _unflatten_optimizer(ckpt: Checkpoint) -> dict:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in ckpt.tensors.items():
        if key.startswith(OPTIM):
            idx, name = key[len(OPTIM):].split(".", 1)
            state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": json.loads(ckpt.meta["param_groups"])}


def save_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                    spec_yaml: str, position: dict[str, int], extra_meta: dict[str, str] | None = None) -> None:
    """Write the checkpoint atomically: a crash (even kill -9) leaves the previous complete file in place.

    A failed write (a full disk, a read-only folder) removes its temp file and raises an OSError naming `path`.
    """
    path = Path(path)
    tensors = {f"{MODEL}{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "ctxssl_version": __version__, "spec": spec_yaml}
    if optimizer is not None:
        opt_tensors, groups = _flatten_optimizer(optimizer)
        tensors.update(opt_tensors)
        meta["param_groups"] = groups
    tensors[f"{RNG}torch_cpu"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"{RNG}cuda.{i}"] = s
    meta.update({k: str(v) for k, v in position.items()})
    meta.update(extra_meta or {})
    meta = sealed(tensors, meta)
    tmp = tmp_path_for(path)
    try:
        save_file(tensors, str(tmp), metadata=meta)
        commit(tmp, path)
    except BaseException as e:  # a full disk, a read-only folder, a Ctrl-C: no temp file stays behind
        with contextlib.suppress(OSError):
            discard(tmp)
        named = os_error_of(e, path)  # safetensors reports "(os error 28)" as text: the OSError, naming `path`
        if named is None or named is e:
            raise
        raise named from e


def resolve_checkpoint_path(path: Path) -> Path:
    """A run folder or a checkpoint file -> the checkpoint file (CtxsslError if there is none)."""
    path = Path(path)
    if path.is_dir():
        cand = path / CHECKPOINT_NAME
        if not cand.is_file():
            raise CtxsslError(f"run folder {path} has no {CHECKPOINT_NAME} yet",
                              "train it first (ctxssl pretrain) or pass a checkpoint file")
        return cand
    if not path.is_file():
        raise CtxsslError(f"checkpoint {path} does not exist", "pass a run folder or a .safetensors checkpoint")
    return path


def read_verified(path: Path, fmt: str, kind: str, fix: str, verify: bool = True) -> tuple[dict, dict]:
    """Read a ctxssl safetensors file (checkpoint or embeddings): tensors and metadata, never unpickling.

    Refuses anything that is not safetensors (a renamed pickle included), a safetensors file of another kind,
    and, with `verify`, a file whose metadata or tensors no longer match the sha256 stored when it was written.
    """
    from safetensors import safe_open

    try:
        with open(path, "rb") as f:
            if len(f.read(8)) < 8:
                raise SafetensorError("file too short")
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CtxsslError(f"{path} is not a readable safetensors {kind} ({e})",
                          f"{fix} (pickled files are never loaded)") from None
    if meta.get("format") != fmt:
        raise CtxsslError(f"{path} is a safetensors file but not a ctxssl {kind}", fix)
    if verify:
        verify_content(path, tensors, meta, kind, fix)
    return tensors, meta


def read_verified_lazy(path: Path, fmt: str, kind: str, fix: str) -> tuple["LazyTensors", dict]:
    """read_verified for files larger than memory: the tensors as a tensorfile.LazyTensors (each read from disk
    when asked for), the content_sha256 checked by reading them once, one at a time."""
    from ctxssl_cli.tensorfile import LazyTensors

    try:
        with open(path, "rb") as f:
            if len(f.read(8)) < 8:
                raise SafetensorError("file too short")
        tensors, meta = LazyTensors.open(path)
    except (SafetensorError, OSError, ValueError, RuntimeError, KeyError, TypeError) as e:
        raise CtxsslError(f"{path} is not a readable safetensors {kind} ({e})",
                          f"{fix} (pickled files are never loaded)") from None
    if meta.get("format") != fmt:
        raise CtxsslError(f"{path} is a safetensors file but not a ctxssl {kind}", fix)
    verify_content(path, tensors, meta, kind, fix)
    return tensors, meta


def verify_content(path: Path, tensors: dict, meta: dict, kind: str, fix: str) -> None:
    """CtxsslError unless the stored content_sha256 is the hash of this metadata and these tensors."""
    stored = meta.get(HASH_KEY)
    if stored == content_hash(tensors, meta):
        return
    if stored == content_hash(tensors):  # (tensors may be a LazyTensors: both hashes read one tensor at a time)
        why = ("its metadata does not match the stored sha256: edited, or written by an older ctxssl whose "
               "sha256 covered the tensors only")
    else:
        why = "its metadata or tensors do not match the stored sha256"
    raise CtxsslError(f"{path} failed its integrity check ({why})", f"the {kind} was modified or corrupted: {fix}")


def _check_format_version(path: Path, meta: dict[str, str]) -> None:
    version = meta.get("format_version", "?")
    if version == FORMAT_VERSION:
        return
    written_by = meta.get("ctxssl_version", "?")
    if version == "1":
        raise CtxsslError(
            f"checkpoint {path} has format 1 (written by ctxssl {written_by}), whose sha256 does not cover its "
            f"metadata (step, spec, optimiser settings); this ctxssl reads format {FORMAT_VERSION} only",
            f"train the run again with this ctxssl, or use ctxssl {written_by} for this checkpoint")
    raise CtxsslError(f"checkpoint {path} has format {version} (written by ctxssl {written_by}); this ctxssl "
                      f"reads format {FORMAT_VERSION}", f"use ctxssl {written_by} or newer for this checkpoint")


def load_checkpoint(path: Path, verify: bool = True) -> Checkpoint:
    """Read a checkpoint (a run folder or the file). Never unpickles; fails loudly on anything unexpected.

    With verify=False (a quick look at the metadata, e.g. the step) neither the sha256 nor the format version
    is checked; anything that trains, resumes or evaluates from the checkpoint reads it with verify=True.
    """
    path = resolve_checkpoint_path(path)
    fix = "pass the checkpoint.safetensors of a ctxssl run"
    tensors, meta = read_verified(path, FORMAT, "checkpoint", fix, verify=False)
    if verify:
        _check_format_version(path, meta)  # before the hash: a format-1 file gets the clearer message
        verify_content(path, tensors, meta, "checkpoint", fix)
    return Checkpoint(path=path, tensors=tensors, meta=meta)


def restore_model(model: torch.nn.Module, ckpt: Checkpoint) -> None:
    """Strict: every key and shape must match the model built from the spec."""
    state = ckpt.model_state()
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensors (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensors (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} shape mismatches (e.g. {k}: checkpoint {tuple(state[k].shape)}, "
                         f"spec {tuple(own[k].shape)})")
        raise CtxsslError(f"checkpoint {ckpt.path} does not match the run spec: " + "; ".join(parts),
                          "use the spec the checkpoint was trained with (its run folder's spec.yaml)")
    model.load_state_dict(state, strict=True)


def restore_optimizer(optimizer: torch.optim.Optimizer, ckpt: Checkpoint) -> None:
    if "param_groups" not in ckpt.meta:
        raise CtxsslError(f"checkpoint {ckpt.path} holds no optimiser state", "it cannot be resumed; start a new run")
    try:
        optimizer.load_state_dict(_unflatten_optimizer(ckpt))
    except (ValueError, KeyError) as e:
        raise CtxsslError(f"optimiser state in {ckpt.path} does not match the model ({e})",
                          "resume with the same spec the run was started with") from None


def restore_rng(ckpt: Checkpoint) -> None:
    """Restore the CPU generator and, when the device count matches the saved one, every CUDA generator."""
    torch.set_rng_state(ckpt.tensors[f"{RNG}torch_cpu"])
    if torch.cuda.is_available():
        prefix = f"{RNG}cuda."
        # by device index as a number: rng.cuda.2 before rng.cuda.10 (a text sort puts 10 first)
        keys = sorted((k for k in ckpt.tensors if k.startswith(prefix)), key=lambda k: int(k[len(prefix):]))
        states = [ckpt.tensors[k] for k in keys]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)

"""Checkpoints: safetensors only (never pickle), atomic writes, strict loading, exact-resume state.

One file holds everything `--resume` needs, under named key prefixes:

    model.<name>            the ContextSSL state dict (unwrapped from DDP / torch.compile)
    optim.<i>.<name>        the optimiser's per-parameter state (Adam: step, exp_avg, exp_avg_sq)
    rng.torch_cpu           torch's CPU generator state; rng.cuda.<i> for each CUDA device

and in the safetensors metadata (strings): the resolved run spec (YAML), the optimiser's param_groups
(JSON), the training position (step, epoch), the ctxssl version, and a sha256 over every tensor's bytes,
checked on load, so that a tampered file fails loudly instead of training or evaluating on bad weights.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ctxssl_cli import __version__
from ctxssl_cli.errors import CtxsslError
from ctxssl_cli.fileio import commit, tmp_path_for

FORMAT = "ctxssl-checkpoint"
FORMAT_VERSION = "1"
MODEL = "model."
OPTIM = "optim."
RNG = "rng."
CHECKPOINT_NAME = "checkpoint.safetensors"


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


def content_hash(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over (name, dtype, shape, bytes) of every tensor, in sorted name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


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
    """Write the checkpoint atomically: a crash (even kill -9) leaves the previous complete file in place."""
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
    meta["content_sha256"] = content_hash(tensors)
    tmp = tmp_path_for(path)
    save_file(tensors, str(tmp), metadata=meta)
    commit(tmp, path)


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
    and, with `verify`, a file whose tensors no longer match the sha256 stored when it was written.
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
    if verify and meta.get("content_sha256") != content_hash(tensors):
        raise CtxsslError(f"{path} failed its integrity check (tensor contents do not match the stored sha256)",
                          f"the file was modified or corrupted: {fix}")
    return tensors, meta


def load_checkpoint(path: Path, verify: bool = True) -> Checkpoint:
    """Read a checkpoint (a run folder or the file). Never unpickles; fails loudly on anything unexpected."""
    path = resolve_checkpoint_path(path)
    tensors, meta = read_verified(path, FORMAT, "checkpoint", "pass the checkpoint.safetensors of a ctxssl run",
                                  verify)
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
    torch.set_rng_state(ckpt.tensors[f"{RNG}torch_cpu"])
    if torch.cuda.is_available():
        states = [ckpt.tensors[k] for k in sorted(ckpt.tensors) if k.startswith(f"{RNG}cuda.")]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)

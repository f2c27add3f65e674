"""Context-conditioned embeddings (SPEC §4).

One encoder pass per image serves every context mode and length: the context only changes the transformer
part. For each (mode, length) the context's keys/values are computed once (KV cache) and reused by every
query; a query is one image token [h, action or 0] attending to the cached context and to itself.

Embeddings file (safetensors):

    h               (N, V', F) float32  encoder features of every embedded view
    z.<mode>.<c>    (N, V', F) float32  context-conditioned outputs, L2-normalised (zero action)
    q.<mode>.<c>    (N, V', F) float32  with retrieval: the output for view 0 of the object with the action
                                        that maps view 0 to view j (the mode's components only), L2-normalised
    latents         (N, V', 7) float32; labels (N,) int64; objects (N,) int64 (split indices); views (V',) int64
    metadata        checkpoint / data sha256, split, modes, lengths, context, protocol version, ...
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import save_file

from ctxssl_cli import __version__
from ctxssl_cli.checkpoint import content_hash, read_verified
from ctxssl_cli.data.pairs import to_model_input
from ctxssl_cli.data.rotations import relative_action
from ctxssl_cli.data.schema import ACTION_DIM, revealed_mask
from ctxssl_cli.errors import CtxsslError
from ctxssl_cli.fileio import commit, tmp_path_for
from ctxssl_cli.runs import LoadedRun

PROTOCOL_VERSION = "1"
MODES = ("rotation", "color", "none")
MODE_ENV = {"rotation": "rotation", "color": "color", "none": "invariant"}  # what each mode keeps of an action
DEFAULT_LENGTHS = (0, 2, 14, 30, 126)
DEFAULT_CONTEXT_PAIRS = 64
CONTEXT_SEED = 1234  # the fixed context of SPEC §4 is drawn with this seed from the train split


def mode_mask(mode: str, action_dim: int = ACTION_DIM) -> torch.Tensor:
    """(A,) float: 1 where the context mode keeps an action component (the mode's environment's reveal)."""
    if mode not in MODE_ENV:
        raise CtxsslError(f"unknown context mode '{mode}'", "use rotation, color or none")
    return revealed_mask(MODE_ENV[mode], action_dim).float()


def check_lengths(lengths: list[int], block_size: int) -> list[int]:
    for c in lengths:
        if c < 0 or c % 2:
            raise CtxsslError(f"context length {c} is not an even number >= 0",
                              "context lengths count tokens, two per pair: use 0, 2, 14, ...")
        if c >= block_size:
            raise CtxsslError(f"context length {c} is not smaller than the model's block size ({block_size})",
                              f"use a length <= {block_size - 2}")
    return sorted(set(lengths))


def default_lengths(block_size: int) -> list[int]:
    return [c for c in DEFAULT_LENGTHS if c < block_size]


@dataclass
class Context:
    """Context pairs: (object index in the split, view a, view b) and their 6-d actions (unmasked)."""

    split: str
    obj: np.ndarray
    view_a: np.ndarray
    view_b: np.ndarray
    action: np.ndarray  # (P, 6) float32
    source: str  # "default-seed-1234" or the file it came from

    def describe(self) -> dict:
        return {"split": self.split, "source": self.source, "pairs": [
            [int(o), int(a), int(b)] for o, a, b in zip(self.obj, self.view_a, self.view_b)]}


def default_context(run: LoadedRun, n_pairs: int = DEFAULT_CONTEXT_PAIRS, seed: int = CONTEXT_SEED) -> Context:
    """64 fixed, seeded training pairs: distinct objects (while there are enough), two distinct views each."""
    split = run.data.split("train")
    rng = np.random.default_rng(seed)
    obj = rng.permutation(split.n_objects)[:n_pairs]
    if len(obj) < n_pairs:
        obj = np.resize(obj, n_pairs)
    va = rng.integers(0, split.n_views, size=n_pairs)
    vb = (va + rng.integers(1, split.n_views, size=n_pairs)) % split.n_views  # != va
    return _context_from(run, "train", obj, va, vb, f"default-seed-{seed}")


def _context_from(run: LoadedRun, split_name: str, obj, va, vb, source: str) -> Context:
    split = run.data.split(split_name)
    canonical = run.spec.data.canonical_quat
    action = relative_action(split.latents[obj, va], split.latents[obj, vb], canonical=canonical)
    return Context(split_name, np.asarray(obj), np.asarray(va), np.asarray(vb), action, source)


def load_context_file(run: LoadedRun, path: Path) -> Context:
    """A YAML file naming context pairs of a prepared dataset's objects (see README, "Context files").

        split: train                  # optional, default train
        pairs:
          - {object: "02691156/1a04e3eab45ca15dd86060f189eb133", from: 3, to: 17}
          - {object: 12, from: 0, to: 5}     # an object index in the split also works
    """
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise CtxsslError(f"cannot read context file {path} ({e})", "pass a YAML file as in the README") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("pairs"), list) or not raw["pairs"]:
        raise CtxsslError(f"context file {path} has no 'pairs' list", "see the README's 'Context files' example")
    unknown = set(raw) - {"split", "pairs"}
    if unknown:
        raise CtxsslError(f"context file {path}: unknown key '{sorted(unknown)[0]}'", "allowed keys: split, pairs")
    split_name = raw.get("split", "train")
    split = run.data.split(split_name)
    index = {oid: i for i, oid in enumerate(split.object_ids)}
    obj, va, vb = [], [], []
    for k, p in enumerate(raw["pairs"]):
        if not isinstance(p, dict) or set(p) != {"object", "from", "to"}:
            raise CtxsslError(f"context file {path}: pair {k} must have exactly the keys object, from, to",
                              "e.g. {object: 12, from: 0, to: 5}")
        o = p["object"]
        if isinstance(o, int) and not isinstance(o, bool):
            if not 0 <= o < split.n_objects:
                raise CtxsslError(f"context file {path}: pair {k} names object index {o}, but split "
                                  f"'{split_name}' has {split.n_objects} objects", "use an index in range or an id")
            oi = o
        elif str(o) in index:
            oi = index[str(o)]
        else:
            raise CtxsslError(f"context file {path}: pair {k} names object '{o}', which is not in split "
                              f"'{split_name}'", "use an object id from the dataset's object list or an index")
        for key in ("from", "to"):
            v = p[key]
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < split.n_views:
                raise CtxsslError(f"context file {path}: pair {k} has {key}={v!r}",
                                  f"views are integers 0..{split.n_views - 1}")
        obj.append(oi), va.append(p["from"]), vb.append(p["to"])
    return _context_from(run, split_name, np.array(obj), np.array(va), np.array(vb), str(path))


@torch.no_grad()
def encode_views(run: LoadedRun, split_name: str, obj: np.ndarray, view: np.ndarray, batch_size: int,
                 progress=None, label: str = "encode") -> torch.Tensor:
    """Encoder features for the given (object, view) pairs, in order: (len(obj), F) float32 on the CPU."""
    split = run.data.split(split_name)
    mean, std = run.meta.get("mean", run.data.mean), run.meta.get("std", run.data.std)
    out = []
    task = progress.add_task(label, total=len(obj)) if progress is not None else None
    for s in range(0, len(obj), batch_size):
        imgs = split.images(obj[s:s + batch_size], view[s:s + batch_size]).to(run.device, non_blocking=True)
        x = to_model_input(imgs, mean, std, run.resolution)
        with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.device.type == "cuda"):
            h = run.model.encode(x)
        out.append(h.float().cpu())
        if task is not None:
            progress.advance(task, len(x))
    return torch.cat(out) if out else torch.zeros(0, run.model.feature_dim)


@torch.no_grad()
def _queries(run: LoadedRun, h: torch.Tensor, action: torch.Tensor | None, cache, batch: int) -> torch.Tensor:
    outs = []
    for s in range(0, h.shape[0], batch):
        hq = h[s:s + batch].to(run.device)
        aq = action[s:s + batch].to(run.device) if action is not None else None
        outs.append(F.normalize(run.model.embed_queries(hq, aq, cache).float(), dim=-1).cpu())
    return torch.cat(outs) if outs else torch.zeros(0, run.model.feature_dim)


def embed_split(run: LoadedRun, split_name: str, modes: list[str], lengths: list[int], context: Context,
                views_per_object: int | None = None, retrieval: bool = False, batch_size: int = 256,
                seed: int = 0, progress=None) -> dict[str, torch.Tensor]:
    """All tensors of an embeddings file for one split (see the module docstring)."""
    split = run.data.split(split_name)
    n, v_all = split.n_objects, split.n_views
    if views_per_object and views_per_object < v_all:
        views = np.sort(np.random.default_rng([seed, 0x71E5]).choice(v_all, views_per_object, replace=False))
    else:
        views = np.arange(v_all)
    if retrieval and views[0] != 0:
        views = np.concatenate([[0], views[views != 0]])
    v = len(views)
    obj_idx = np.repeat(np.arange(n), v)  # obj-major, every embedded view, nothing dropped
    view_idx = np.tile(views, n)
    h = encode_views(run, split_name, obj_idx, view_idx, batch_size, progress, f"encode {split_name}")  # (n*v, F)
    c_max = max(lengths) // 2
    ctx_h = encode_views(run, context.split, np.concatenate([context.obj[:c_max], context.obj[:c_max]]),
                         np.concatenate([context.view_a[:c_max], context.view_b[:c_max]]), batch_size)  # (2c, F)
    ctx_hx, ctx_hy = ctx_h[:c_max].to(run.device), ctx_h[c_max:].to(run.device)
    ctx_action = torch.as_tensor(context.action[:c_max]).to(run.device)
    tensors = {"h": h.reshape(n, v, -1)}
    if retrieval:
        lat = split.latents[:, views]  # (n, v, 7)
        rel = relative_action(np.repeat(lat[:, :1], v, axis=1), lat, canonical=run.spec.data.canonical_quat)
        q_action = torch.as_tensor(rel.reshape(n * v, -1))  # view 0 -> view j, for every j
        h0 = h.reshape(n, v, -1)[:, 0].repeat_interleave(v, dim=0)  # (n*v, F): view 0 repeated
    task = progress.add_task(f"context {split_name}", total=len(modes) * len(lengths)) if progress is not None else None
    for mode in modes:
        keep = mode_mask(mode, run.action_dim).to(run.device)
        for c in lengths:
            k = c // 2
            cache = run.model.build_context(ctx_hx[:k], ctx_hy[:k], ctx_action[:k] * keep)
            tensors[f"z.{mode}.{c}"] = _queries(run, h, None, cache, 4 * batch_size).reshape(n, v, -1)
            if retrieval:
                qa = q_action * keep.cpu()
                tensors[f"q.{mode}.{c}"] = _queries(run, h0, qa, cache, 4 * batch_size).reshape(n, v, -1)
            if task is not None:
                progress.advance(task)
    tensors["latents"] = torch.as_tensor(split.latents[:, views].copy())
    tensors["labels"] = torch.as_tensor(split.labels.astype(np.int64))
    tensors["objects"] = torch.arange(n, dtype=torch.int64)
    tensors["views"] = torch.as_tensor(views.astype(np.int64))
    return tensors


def embeddings_metadata(run: LoadedRun, split: str, modes, lengths, context: Context, retrieval: bool,
                        views_per_object: int | None) -> dict[str, str]:
    return {
        "format": "ctxssl-embeddings",
        "protocol_version": PROTOCOL_VERSION,
        "ctxssl_version": __version__,
        "checkpoint": str(run.checkpoint),
        "checkpoint_sha256": run.checkpoint_sha256,
        "checkpoint_step": str(run.step),
        "data": str(run.data.root),
        "data_manifest_sha256": run.data.manifest_sha256,
        "split": split,
        "modes": ",".join(modes),
        "lengths": ",".join(str(c) for c in lengths),
        "retrieval": str(bool(retrieval)),
        "views_per_object": str(views_per_object or 0),
        "context": json.dumps(context.describe()),
    }


def cache_key(meta: dict[str, str]) -> str:
    """A short hash of everything that determines an embeddings file's contents."""
    fields = ("protocol_version", "checkpoint_sha256", "data_manifest_sha256", "split", "modes", "lengths",
              "retrieval", "views_per_object", "context")
    return hashlib.sha256(json.dumps([meta[f] for f in fields]).encode()).hexdigest()[:16]


def save_embeddings(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    path = Path(path)
    if path.suffix != ".safetensors":
        raise CtxsslError(f"--out {path} must end in .safetensors", f"e.g. --out {path.with_suffix('.safetensors')}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: t.contiguous() for k, t in tensors.items()}
    meta = {**meta, "content_sha256": content_hash(tensors)}
    tmp = tmp_path_for(path)
    save_file(tensors, str(tmp), metadata=meta)
    commit(tmp, path)


def load_embeddings(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    path = Path(path)
    if not path.is_file():
        raise CtxsslError(f"embeddings file {path} does not exist", "make it with `ctxssl embed`")
    return read_verified(path, "ctxssl-embeddings", "embeddings file", "make it again with `ctxssl embed`")

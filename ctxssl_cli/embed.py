"""Context-conditioned embeddings (SPEC §4).

One encoder pass per image serves every context mode and length: the context only changes the transformer
part. For each (mode, length) the context's keys/values are computed once (KV cache) and reused by every
query; a query is one image token [h, action or 0] attending to the cached context and to itself.

Everything follows the run's action schema (data/schema.py): the split read (`LoadedRun.split`: stored views, or
the fixed augmented views of an augment2d dataset, data/virtual_views.py), the actions (data/actions.py) and the
context modes: one per factor plus "none" (views3d: rotation, color, none; augment2d: crop, color, blur, none).

Embeddings file (safetensors):

    h               (N, V', F) float32  encoder features of every embedded view
    z.<mode>.<c>    (N, V', F) float32  context-conditioned outputs, L2-normalised (zero action)
    q.<mode>.<c>    (N, V', F) float32  with retrieval: the output for view 0 of the object with the action
                                        that maps view 0 to view j (the mode's components only), L2-normalised
    latents         (N, V', L) float32: views3d the 7 stored values per view, augment2d the 9 view parameters;
                    labels (N,) int64; objects (N,) int64 (split indices); views (V',) int64
    metadata        checkpoint / data sha256, split, modes, lengths, protocol version, ..., context (JSON of
                    Context.describe(): kind default|file, source, file sha256, n_pairs, pairs) and
                    context_source (its one-line label); both are part of the cache key; augment2d also
                    virtual_views (JSON of AugmentedViews.describe(), part of the cache key)

A file is written as the tensors are made (h whole, each z and q in pieces of queries) and read back one tensor
at a time (tensorfile.py), so `embed` holds the split's h and `evaluate` one embedding, never a whole split's
embeddings: at 3DIEBench scale they are tens of GB.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import contextlib
from collections.abc import Iterator, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from ctxssl_cli import __version__
from ctxssl_cli.checkpoint import read_verified_lazy
from ctxssl_cli.context_pairs import Context, check_context_covers, default_context, load_context_file
from ctxssl_cli.data.actions import relative_action_for
from ctxssl_cli.data.pairs import to_model_input
from ctxssl_cli.data.schema import INVARIANT, SCHEMAS, VIEWS3D, ActionSchema, revealed_mask
from ctxssl_cli.errors import CtxsslError
from ctxssl_cli.runs import LoadedRun
from ctxssl_cli.tensorfile import StreamWriter, TensorDict

PROTOCOL_VERSION = "1"
NONE_MODE = "none"  # the context mode that zeroes every action
MODES = ("rotation", "color", NONE_MODE)  # views3d's modes (modes_for(VIEWS3D))
MODE_ENV = {"rotation": "rotation", "color": "color", NONE_MODE: INVARIANT}  # views3d: what each mode keeps
DEFAULT_LENGTHS = (0, 2, 14, 30, 126)
MAX_BATCH_SIZE = 65536  # images per encoder batch; far above what fits a GPU at 224 px, so only typos hit it


class ProgressLike(Protocol):
    def advance(self, n: int = 1, text: str | None = None) -> None: ...


# Makes one progress tracker per piece of work: `progress(label, total, unit=...)` used as a context manager,
# e.g. the class ctxssl_cli.progress.Progress. The core never imports rich; None shows nothing.
ProgressFactory = Callable[..., ContextManager[ProgressLike]]


class _Silent:
    def advance(self, n: int = 1, text: str | None = None) -> None:
        pass


def track(progress: ProgressFactory | None, label: str, total: int, unit: str = "") -> ContextManager[ProgressLike]:
    """A progress tracker from `progress`, or a silent one."""
    return progress(label, total, unit=unit, transient=True) if progress is not None else nullcontext(_Silent())


def modes_for(schema: ActionSchema = VIEWS3D) -> tuple[str, ...]:
    """The context modes of a schema: one per factor (it keeps that factor's components), then "none"."""
    return (*schema.factor_names, NONE_MODE)


def _one_of(names) -> str:
    names = list(names)
    return ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else names[0]


def mode_mask(mode: str, action_dim: int | None = None, device="cpu", schema: ActionSchema = VIEWS3D) -> torch.Tensor:
    """(A,) float: 1 where the context mode keeps an action component (the reveal of the environment of the same
    name; "none": the invariant environment). A defaults to the schema's width."""
    if mode not in modes_for(schema):
        raise CtxsslError(f"unknown context mode '{mode}'" + ("" if schema == VIEWS3D else f" for {schema.name} data"),
                          f"use {_one_of(modes_for(schema))}")
    env = INVARIANT if mode == NONE_MODE else mode
    return revealed_mask(env, schema.dim if action_dim is None else action_dim, device, schema=schema).float()


def check_mode_names(modes: list[str] | None) -> list[str] | None:
    """The context modes deduplicated in the given order, None (the run's schema decides) kept; a name that no
    schema knows is an error. For checking options before a run (and so its schema) is loaded."""
    if not modes:
        return None
    known = {m: None for s in SCHEMAS.values() for m in modes_for(s)}
    for m in modes:
        if m not in known:
            raise CtxsslError(f"unknown context mode '{m}'", f"use {_one_of(MODES)} (3D views), or "
                              f"{_one_of(modes_for(SCHEMAS['augment2d']))} (2D augmentations)")
    return list(dict.fromkeys(modes))


def check_modes(modes: list[str] | None, schema: ActionSchema = VIEWS3D) -> list[str]:
    """The context modes, deduplicated in the given order (default: all of the schema's); unknown names are
    errors."""
    modes = list(dict.fromkeys(modes or modes_for(schema)))
    for m in modes:
        mode_mask(m, schema=schema)  # validates the name
    return modes


def check_lengths(lengths: list[int], block_size: int | None = None) -> list[int]:
    """Sorted distinct context lengths: even, >= 0 and (when the block size is known) below it."""
    for c in lengths:
        if c < 0 or c % 2:
            raise CtxsslError(f"context length {c} is not an even number >= 0",
                              "context lengths count tokens, two per pair: use 0, 2, 14, ...")
        if block_size is not None and c >= block_size:
            raise CtxsslError(f"context length {c} is not smaller than the model's block size ({block_size})",
                              f"use a length <= {block_size - 2}")
    return sorted(set(lengths))


def default_lengths(block_size: int) -> list[int]:
    return [c for c in DEFAULT_LENGTHS if c < block_size]


def check_int(option: str, value, low: int, high: int | None = None, fix: str = "") -> int:
    """An integer option in [low, high]; bools, floats (nan/inf too) and out-of-range values are errors."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise CtxsslError(f"{option} {value!r} is not an integer", fix or f"pass a whole number >= {low}")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise CtxsslError(f"{option} {value} is out of range", fix or f"use a number {bound}")
    return value


def check_float(option: str, value, low: float | None = None, positive: bool = False) -> float:
    """A finite float option (nan and inf are errors), optionally > 0 or >= low."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CtxsslError(f"{option} {value!r} is not a finite number", "pass a plain number (not nan or inf)")
    if (positive and value <= 0) or (low is not None and value < low):
        raise CtxsslError(f"{option} {value} is out of range", "use a number > 0" if positive else f"use a number >= {low}")
    return float(value)


def check_batch_size(value, option: str = "--batch-size") -> int:
    return check_int(option, value, 1, MAX_BATCH_SIZE, f"use a number of images between 1 and {MAX_BATCH_SIZE}, e.g. 256")


def check_out_file(path: Path) -> Path:
    """An embeddings file to write: a .safetensors name, not a folder, in a place that can be written."""
    path = Path(path)
    if path.is_dir():
        raise CtxsslError(f"--out {path} is a folder", f"name a file in it, e.g. --out {path / 'val.safetensors'}")
    if path.suffix != ".safetensors":
        raise CtxsslError(f"--out {path} must end in .safetensors", f"e.g. --out {path.with_suffix('.safetensors')}")
    parent = path.absolute().parent
    while not parent.exists():  # the nearest folder that exists decides whether the rest can be made
        parent = parent.parent
    if not parent.is_dir():
        raise CtxsslError(f"--out {path}: {parent} is a file, not a folder", "choose a path inside a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CtxsslError(f"--out {path}: folder {parent} is not writable", "choose a folder you can write to")
    return path


@torch.no_grad()
def encode_views(run: LoadedRun, split_name: str, obj: np.ndarray, view: np.ndarray, batch_size: int,
                 progress: ProgressFactory | None = None, label: str = "encode") -> torch.Tensor:
    """Encoder features for the given (object, view) pairs, in order: (len(obj), F) float32 on the CPU."""
    batch_size = check_batch_size(batch_size, "batch size")
    split = run.split(split_name)
    mean, std = run.meta.get("mean", run.data.mean), run.meta.get("std", run.data.std)
    out = torch.empty(len(obj), run.model.feature_dim)  # filled batch by batch: no list + cat (2x the split)
    with track(progress, label, len(obj), unit="img") as bar:
        for s in range(0, len(obj), batch_size):
            imgs = split.images(obj[s:s + batch_size], view[s:s + batch_size]).to(run.device, non_blocking=True)
            x = to_model_input(imgs, mean, std, run.resolution)
            with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.device.type == "cuda"):
                h = run.model.encode(x)
            out[s:s + len(x)] = h.float().cpu()
            bar.advance(len(x))
    return out


@torch.no_grad()
def _query_pieces(run: LoadedRun, h: torch.Tensor, action: torch.Tensor | None, cache, batch: int,
                  rows: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
    """The L2-normalised outputs of query tokens [h[rows], action] attending to `cache`, `batch` queries at a
    time, float32 on the CPU: a generator, so a writer stores each piece as it is made and the split's outputs
    are never whole in memory. rows: h's row of each query (default: every row of h in order)."""
    total = h.shape[0] if rows is None else len(rows)
    for s in range(0, total, batch):
        hq = (h[s:s + batch] if rows is None else h[rows[s:s + batch]]).to(run.device)
        aq = action[s:s + batch].to(run.device) if action is not None else None
        yield F.normalize(run.model.embed_queries(hq, aq, cache).float(), dim=-1).cpu()


def embed_split(run: LoadedRun, split_name: str, modes: list[str], lengths: list[int], context: Context,
                views_per_object: int | None = None, retrieval: bool = False, batch_size: int = 256,
                seed: int = 0, progress: ProgressFactory | None = None) -> dict[str, torch.Tensor]:
    """All tensors of an embeddings file for one split (see the module docstring), in memory."""
    tensors = TensorDict()
    embed_split_into(tensors, run, split_name, modes, lengths, context, views_per_object, retrieval, batch_size,
                     seed, progress)
    return dict(tensors)


def n_tensors(modes: list[str], lengths: list[int], retrieval: bool) -> int:
    """How many tensors embed_split_into hands over (h, z and q per mode and length, four index tensors)."""
    return 1 + len(modes) * len(lengths) * (2 if retrieval else 1) + 4


def embed_split_into(out: StreamWriter | TensorDict, run: LoadedRun, split_name: str, modes: list[str],
                     lengths: list[int], context: Context, views_per_object: int | None = None,
                     retrieval: bool = False, batch_size: int = 256, seed: int = 0,
                     progress: ProgressFactory | None = None) -> None:
    """Write every tensor of an embeddings file for one split into `out` (a tensorfile.StreamWriter, or a
    TensorDict in memory) as it is made: h whole, each z and q in pieces of 4 x batch_size queries (so a
    StreamWriter never holds more of the split than h), z at c = 0 (no context: the same in every mode) computed
    once and copied.

    `progress` makes a tracker per stage (encoding the split, then the contexts); see ProgressFactory."""
    check_context_covers(context, lengths)
    split = run.split(split_name)
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
    shape = (n, v, h.shape[1])
    out.add("h", h.reshape(shape))
    if retrieval:
        lat = split.latents[:, views]  # (n, v, L)
        rel = relative_action_for(run.schema, np.repeat(lat[:, :1], v, axis=1), lat,
                                  canonical=run.spec.data.canonical_quat)  # (n, v, A)
        q_action = torch.as_tensor(rel.reshape(n * v, -1))  # view 0 -> view j, for every j
        view0 = torch.arange(n).repeat_interleave(v) * v  # h's row of view 0 of each query's object
    step = 4 * batch_size
    with track(progress, f"contexts {split_name}", len(modes) * len(lengths)) as bar:
        for c in lengths:
            k = c // 2
            free = None  # c = 0: no context, so z (zero-action queries) is the same in every mode: made once
            for mode in modes:
                keep = mode_mask(mode, run.action_dim, run.device, schema=run.schema)
                cache = run.model.build_context(ctx_hx[:k], ctx_hy[:k], ctx_action[:k] * keep)
                if free is not None:
                    out.add_copy(f"z.{mode}.{c}", free)
                else:
                    out.add_pieces(f"z.{mode}.{c}", shape, torch.float32, _query_pieces(run, h, None, cache, step))
                    free = f"z.{mode}.{c}" if c == 0 else None
                if retrieval:
                    out.add_pieces(f"q.{mode}.{c}", shape, torch.float32,
                                   _query_pieces(run, h, q_action * keep.cpu(), cache, step, rows=view0))
                bar.advance(1, f"{mode}@{c}")
    out.add("latents", torch.as_tensor(split.latents[:, views].copy()))
    out.add("labels", torch.as_tensor(split.labels.astype(np.int64)))
    out.add("objects", torch.arange(n, dtype=torch.int64))
    out.add("views", torch.as_tensor(views.astype(np.int64)))


def embeddings_metadata(run: LoadedRun, split: str, modes, lengths, context: Context, retrieval: bool,
                        views_per_object: int | None) -> dict[str, str]:
    virtual = virtual_views(run, split)
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
        "context_source": context.label(),
        **({"virtual_views": virtual} if virtual is not None else {}),
    }


def virtual_views(run: LoadedRun, split: str) -> str | None:
    """JSON of what determines the evaluation views of an augment2d split (AugmentedViews.describe()); None for
    stored views."""
    describe = getattr(run.split(split), "describe", None)
    return json.dumps(describe(), sort_keys=True) if describe is not None else None


def cache_key(meta: dict[str, str]) -> str:
    """A short hash of everything that determines an embeddings file's contents (the evaluation views of an
    augment2d split too; a views3d key is what it was before they existed)."""
    fields = ("protocol_version", "checkpoint_sha256", "data_manifest_sha256", "split", "modes", "lengths",
              "retrieval", "views_per_object", "context", "context_source")
    fields += ("virtual_views",) if "virtual_views" in meta else ()
    return hashlib.sha256(json.dumps([meta[f] for f in fields]).encode()).hexdigest()[:16]


def save_embeddings(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    """Write an embeddings file from tensors in memory (see embedding_writer for one made tensor by tensor)."""
    with embeddings_writer(path, meta, len(tensors)) as w:
        for name, t in tensors.items():
            w.add(name, t)


@contextlib.contextmanager
def embeddings_writer(path: Path, meta: dict[str, str], max_tensors: int):
    """`with embeddings_writer(path, meta, n) as w: w.add(name, tensor) ...`: an embeddings file written tensor
    by tensor (tensorfile.StreamWriter), sealed with its content_sha256 and moved into place only when the block
    ends without an error; a failure or Ctrl-C leaves no temp file and no half-written target. An OSError (a
    full disk, a read-only file system) propagates with the target's name as its filename, for cli/app.py's
    one-line message."""
    path = check_out_file(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CtxsslError(f"cannot make the folder of {path} ({e.strerror or e})", "choose another --out") from None
    with StreamWriter(path, meta, max_tensors) as w:
        yield w


def load_embeddings(path: Path) -> tuple[Mapping[str, torch.Tensor], dict[str, str]]:
    """The tensors (a tensorfile.LazyTensors: each read from disk when asked for) and metadata of an embeddings
    file, its content_sha256 checked."""
    path = Path(path)
    if not path.is_file():
        raise CtxsslError(f"embeddings file {path} does not exist", "make it with `ctxssl embed`")
    return read_verified_lazy(path, "ctxssl-embeddings", "embeddings file", "make it again with `ctxssl embed`")


# ---- `ctxssl embed` end to end ---------------------------------------------------------------------------
@dataclass
class EmbedSettings:
    """What `ctxssl embed` was asked for; checked on construction, before any run is loaded."""

    split: str = "val"
    modes: list[str] | None = None  # None: all of the run's schema (views3d: rotation, color, none)
    lengths: list[int] | None = None  # None: DEFAULT_LENGTHS below the run's block size
    context_pairs: Path | None = None  # a context file; None: the default seeded context
    views_per_object: int = 0  # 0: every view
    retrieval: bool = False
    batch_size: int = 256  # images per encoder batch
    out: Path | None = None  # None: RUN/embeddings/<split>-<cache key>.safetensors

    def __post_init__(self):
        if not isinstance(self.split, str) or not self.split:
            raise CtxsslError(f"--split {self.split!r} is not a split name", "use --split train or --split val")
        self.modes = check_mode_names(self.modes)  # against the run's schema once it is loaded
        if self.lengths:
            self.lengths = check_lengths(list(self.lengths))
        self.views_per_object = check_int("--views-per-object", self.views_per_object, 0, None,
                                          "use 0 (every view) or a positive number of views")
        self.batch_size = check_batch_size(self.batch_size)
        if self.context_pairs is not None and not Path(self.context_pairs).is_file():
            what = "is a folder" if Path(self.context_pairs).is_dir() else "does not exist"
            raise CtxsslError(f"--context-pairs {self.context_pairs} {what}",
                              "pass a YAML file as in the README's 'Context files' example")
        if self.out is not None:
            self.out = check_out_file(self.out)


@dataclass
class EmbedResult:
    path: Path
    shape: tuple[int, int, int]  # (objects, views, feature dim)
    modes: list[str]
    lengths: list[int]
    context: Context
    run: LoadedRun = field(repr=False)


def embed_run(checkpoint: Path, data: Path | None, device: str, settings: EmbedSettings,
              progress: ProgressFactory | None = None, log: Callable[[str], None] = lambda msg: None) -> EmbedResult:
    """Load the run, check the settings against it, embed the split and write the embeddings file."""
    from ctxssl_cli.devices import resolve_device
    from ctxssl_cli.runs import load_run

    run = load_run(checkpoint, data, resolve_device(device))
    if not run.spec.is_contextssl:
        raise CtxsslError(f"{run.checkpoint} is a {run.spec.method} run: it has no context to condition embeddings on",
                          f"score it with `ctxssl evaluate --checkpoint {run.checkpoint.parent}` (R² and top-1 on h)")
    block = run.spec.model.block_size
    lengths = check_lengths(settings.lengths or default_lengths(block), block)
    modes = check_modes(settings.modes, run.schema)
    split = run.split(settings.split)
    if settings.views_per_object > split.n_views:
        raise CtxsslError(f"--views-per-object {settings.views_per_object} is more than the {split.n_views} views "
                          f"of split '{settings.split}'", f"use 0 (every view) or a number up to {split.n_views}")
    context = load_context_file(run, settings.context_pairs) if settings.context_pairs else default_context(run)
    check_context_covers(context, lengths)
    vpo = settings.views_per_object or None
    meta = embeddings_metadata(run, settings.split, modes, lengths, context, settings.retrieval, vpo)
    target = settings.out or (run.checkpoint.parent / "embeddings" / f"{settings.split}-{cache_key(meta)}.safetensors")
    target = check_out_file(target)
    log(f"checkpoint: {run.checkpoint} (step {run.step})  data: {run.data.root}  split: {settings.split}")
    log(f"context: {context.label()}")
    with embeddings_writer(target, meta, n_tensors(modes, lengths, settings.retrieval)) as w:
        embed_split_into(w, run, settings.split, modes, lengths, context, vpo, settings.retrieval,
                         settings.batch_size, progress=progress)
    n, v, f = w.entries["h"]["shape"]
    return EmbedResult(target, (n, v, f), modes, lengths, context, run)

"""The context of `embed` and `evaluate` (SPEC §4): a fixed set of (image, action, transformed image) training
pairs shown to the transformer before every query. The default is 64 pairs of the train split drawn with a fixed
seed; a context file (YAML: `pairs: [{object, from, to}, ...]`) names its own. A Context records where it came from
(its label and, for a file, the file's sha256), which the embeddings files store and their cache key covers.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from ctxssl_cli.data.actions import relative_action_for
from ctxssl_cli.errors import CtxsslError
from ctxssl_cli.runs import LoadedRun

DEFAULT_CONTEXT_PAIRS = 64
CONTEXT_SEED = 1234  # the fixed context of SPEC §4 is drawn with this seed from the train split


@dataclass
class Context:
    """Context pairs: (object index in the split, view a, view b) and their actions (unmasked, the run's schema)."""

    split: str
    obj: np.ndarray
    view_a: np.ndarray
    view_b: np.ndarray
    action: np.ndarray  # (P, schema.dim) float32
    source: str  # "default-seed-1234" or the file it came from
    sha256: str | None = None  # of the context file; None for the default seeded context

    @property
    def kind(self) -> str:
        return "default" if self.sha256 is None else "file"

    def describe(self) -> dict:
        """Everything that identifies the context (stored in embeddings files and reports)."""
        return {"kind": self.kind, "split": self.split, "source": self.source, "sha256": self.sha256,
                "n_pairs": int(len(self.obj)),
                "pairs": [[int(o), int(a), int(b)] for o, a, b in zip(self.obj, self.view_a, self.view_b)]}

    def label(self) -> str:
        """One line for people: which context produced the numbers."""
        return describe_context(self.describe())


def describe_context(desc: dict) -> str:
    """The one-line label of a context description (Context.describe(), or one read from a file)."""
    n, split = desc.get("n_pairs", len(desc.get("pairs", []))), desc.get("split", "train")
    if desc.get("kind", "default" if str(desc.get("source", "")).startswith("default-") else "file") == "default":
        return f"default seeded context ({desc.get('source')}, {n} {split} pairs)"
    return f"context file {desc.get('source')} (sha256 {str(desc.get('sha256'))[:12]}, {n} {split} pairs)"


def context_from_description(run: LoadedRun, desc: dict) -> Context:
    """Rebuild the context recorded in an embeddings file (its pairs, split and source) for this run."""
    pairs = np.asarray(desc.get("pairs") or [], dtype=np.int64).reshape(-1, 3)
    return _context_from(run, desc.get("split", "train"), pairs[:, 0], pairs[:, 1], pairs[:, 2],
                         str(desc.get("source")), desc.get("sha256"))


def check_context_covers(context: Context, lengths: list[int]) -> None:
    if lengths and max(lengths) // 2 > len(context.obj):
        raise CtxsslError(f"context length {max(lengths)} needs {max(lengths) // 2} pairs but the context has "
                          f"{len(context.obj)}", "add pairs to the context file or use a shorter --context-length")


def default_context(run: LoadedRun, n_pairs: int = DEFAULT_CONTEXT_PAIRS, seed: int = CONTEXT_SEED) -> Context:
    """64 fixed, seeded training pairs: distinct objects (while there are enough), two distinct views each (of an
    augment2d dataset: two of its fixed evaluation views)."""
    split = run.split("train")
    rng = np.random.default_rng(seed)
    obj = rng.permutation(split.n_objects)[:n_pairs]
    if len(obj) < n_pairs:
        obj = np.resize(obj, n_pairs)
    va = rng.integers(0, split.n_views, size=n_pairs)
    vb = (va + rng.integers(1, split.n_views, size=n_pairs)) % split.n_views  # != va
    return _context_from(run, "train", obj, va, vb, f"default-seed-{seed}")


def _context_from(run: LoadedRun, split_name: str, obj, va, vb, source: str, sha256: str | None = None) -> Context:
    split = run.split(split_name)
    canonical = run.spec.data.canonical_quat
    action = relative_action_for(run.schema, split.latents[obj, va], split.latents[obj, vb], canonical=canonical)
    return Context(split_name, np.asarray(obj), np.asarray(va), np.asarray(vb), action, source, sha256)


def _yaml_problem(e: yaml.YAMLError) -> str:
    """A YAML error as one line: the problem and where (line, column)."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    what = getattr(e, "problem", None) or getattr(e, "reason", None) or type(e).__name__
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return " ".join(f"{what}{where}".split())


def load_context_file(run: LoadedRun, path: Path) -> Context:
    """A YAML file naming context pairs of a prepared dataset's objects (see README, "Context files").

        split: train                  # optional, default train
        pairs:
          - {object: "02691156/1a04e3eab45ca15dd86060f189eb133", from: 3, to: 17}
          - {object: 12, from: 0, to: 5}     # an object index in the split also works

    Read with yaml.safe_load only. Every problem is one line naming the file and the pair (numbered from 1).
    On an augment2d dataset `from` and `to` name the fixed evaluation views (data/virtual_views.py).
    """
    path = Path(path)
    fix = "pass a YAML file as in the README's 'Context files' example"
    if path.is_dir():
        raise CtxsslError(f"context file {path} is a folder", fix)
    try:
        data = path.read_bytes()
        raw = yaml.safe_load(data.decode("utf-8"))
    except OSError as e:
        raise CtxsslError(f"cannot read context file {path} ({e.strerror or e})", fix) from None
    except UnicodeDecodeError as e:
        raise CtxsslError(f"context file {path} is not a text file (byte {e.start} is not UTF-8)", fix) from None
    except yaml.YAMLError as e:
        raise CtxsslError(f"context file {path} is not valid YAML ({_yaml_problem(e)})", fix) from None
    if not isinstance(raw, dict) or not isinstance(raw.get("pairs"), list) or not raw["pairs"]:
        got = "" if isinstance(raw, dict) else f" (it holds a {type(raw).__name__}, not a mapping)"
        raise CtxsslError(f"context file {path} has no 'pairs' list{got}", "see the README's 'Context files' example")
    unknown = set(raw) - {"split", "pairs"}
    if unknown:
        raise CtxsslError(f"context file {path}: unknown key '{sorted(map(str, unknown))[0]}'",
                          "allowed keys: split, pairs")
    split_name = raw.get("split", "train")
    if not isinstance(split_name, str):
        raise CtxsslError(f"context file {path}: split {split_name!r} is not a name", "use split: train or split: val")
    split = run.split(split_name)
    index = {oid: i for i, oid in enumerate(split.object_ids)}
    obj, va, vb = [], [], []
    for k, p in enumerate(raw["pairs"], start=1):
        where = f"context file {path}, pair {k}"
        if not isinstance(p, dict) or set(p) != {"object", "from", "to"}:
            raise CtxsslError(f"{where}: a pair must have exactly the keys object, from, to (got {p!r:.60})",
                              "e.g. {object: 12, from: 0, to: 5}")
        o = p["object"]
        if isinstance(o, int) and not isinstance(o, bool):
            if not 0 <= o < split.n_objects:
                raise CtxsslError(f"{where}: object index {o} is out of range: split '{split_name}' has "
                                  f"{split.n_objects} objects", f"use an index 0..{split.n_objects - 1} or an id")
            oi = o
        elif isinstance(o, str) and o in index:
            oi = index[o]
        else:
            raise CtxsslError(f"{where}: object {o!r} is not in split '{split_name}'",
                              "use an object id from the dataset's object list or an index")
        for key in ("from", "to"):
            v = p[key]
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < split.n_views:
                raise CtxsslError(f"{where}: view {key}={v!r} is out of range",
                                  f"views are integers 0..{split.n_views - 1}")
        obj.append(oi), va.append(p["from"]), vb.append(p["to"])
    return _context_from(run, split_name, np.array(obj), np.array(va), np.array(vb), str(path),
                         hashlib.sha256(data).hexdigest())

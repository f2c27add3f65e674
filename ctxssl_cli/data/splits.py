"""Train/val splits by object: a deterministic class-stratified split, and the published SIE split files.

The published 3DIEBench split (SIE repository, `data/train_images.npy`, `val_images.npy`, `train_labels.npy`,
`val_labels.npy`, SPEC §3.2) holds object paths "SYNSET/OBJ_ID" (sometimes with a leading "/") and int labels.
We load them with allow_pickle=False (string arrays of dtype '<U..' need no pickle; data/inputs.py checks the
header first and refuses FIFOs and other non-regular files) and also accept plain UTF-8 text files with one entry
per line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ctxssl_cli.data.inputs import check_object_id, decode_text, read_npy, read_regular_bytes
from ctxssl_cli.errors import CtxsslError

MAX_LABEL = 999_999  # class names are listed up to the largest label: a huge label would make a huge list


def stratified_split(object_ids: list[str], labels: np.ndarray, val_fraction: float = 0.2,
                     seed: int = 0) -> tuple[list[int], list[int]]:
    """Indices (train, val), each sorted, of a class-stratified split by object.

    Per class, the objects are sorted by id and shuffled by an rng seeded by (seed, label), and
    round(n * val_fraction) of them go to val, clamped so that a class keeps >= 1 train object and, when it
    has >= 2 objects, gets >= 1 val object. Deterministic, independent of the input order, and a class's
    split does not change when other classes are added.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise CtxsslError(f"val_fraction={val_fraction} is outside [0, 1)", "use e.g. 0.2")
    labels = np.asarray(labels, np.int64)
    if len(labels) != len(object_ids):
        raise ValueError(f"{len(object_ids)} object ids but {len(labels)} labels")
    train, val = [], []
    for lab in np.unique(labels):
        members = sorted(np.nonzero(labels == lab)[0].tolist(), key=lambda i: object_ids[i])
        order = np.random.default_rng([int(seed), int(lab)]).permutation(len(members))
        n = len(members)
        n_val = int(round(n * val_fraction))
        n_val = min(max(n_val, 1 if n >= 2 and val_fraction > 0 else 0), n - 1)
        picked = [members[j] for j in order]
        val += picked[:n_val]
        train += picked[n_val:]
    return sorted(train), sorted(val)


def normalise_key(entry: str) -> str:
    """'/SYNSET/OBJ_ID/' or 'root/.../SYNSET/OBJ_ID' -> 'SYNSET/OBJ_ID'."""
    parts = [p for p in str(entry).strip().replace("\\", "/").split("/") if p not in ("", ".")]
    return "/".join(parts[-2:])


_LIST_FIX = "pass the *_images.npy file (a 1-d array of object paths), or a text file with one SYNSET/OBJ_ID per line"
_LABELS_FIX = "pass the *_labels.npy file, or a text file with one integer per line"
_PICKLE_FIX = ("re-save it as a text list: one entry per line "
               "(e.g. `open('f.txt','w').write('\\n'.join(map(str, arr)))`)")


def read_split_list(path) -> list[str]:
    """Object keys 'SYNSET/OBJ_ID' from a published .npy split file or a text file (one per line)."""
    path = Path(path)
    data = read_regular_bytes(path, "split file", "check the path given to --train-list/--val-list")
    if path.suffix == ".npy":
        arr = read_npy(data, f"split file {path}", _LIST_FIX, _PICKLE_FIX)
        if arr.dtype.kind not in "US":
            raise CtxsslError(f"split file {path} holds {arr.dtype} values, not object paths", _LIST_FIX)
        if arr.ndim != 1:
            raise CtxsslError(f"split file {path} holds an array of shape {arr.shape}, not a 1-d list of object "
                              "paths", _LIST_FIX)
        entries = [e.decode(errors="replace") if isinstance(e, bytes) else str(e) for e in arr.tolist()]
    else:
        text = decode_text(data, f"split file {path}", _LIST_FIX)
        lines = text.split("\n")  # not splitlines(): a vertical tab or U+2028 inside an entry is an error, not a break
        entries = [ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    keys = [normalise_key(e) for e in entries]
    for e, k in zip(entries, keys):
        check_object_id(k, f"split file {path}", "fix or regenerate the split file")
    bad = next((e for e, k in zip(entries, keys) if k.count("/") != 1), None)
    if bad is not None:
        raise CtxsslError(f"split file {path}: entry {bad!r} is not SYNSET/OBJ_ID", "fix or regenerate the split file")
    dup = _first_duplicate(keys)
    if dup:
        raise CtxsslError(f"split file {path} lists object {dup} twice", "remove the duplicate line")
    return keys


def read_labels(path, n: int) -> np.ndarray:
    """int64 labels (n,) from a published .npy labels file or a text file (one int per line)."""
    path = Path(path)
    data = read_regular_bytes(path, "labels file", "check the path given to --train-labels/--val-labels")
    not_int = CtxsslError(f"labels file {path} does not hold integer labels", _LABELS_FIX)
    if path.suffix == ".npy":
        arr = read_npy(data, f"labels file {path}", _LABELS_FIX, _PICKLE_FIX).reshape(-1)
        kind = arr.dtype.kind
        if kind == "f":
            if not (np.all(np.isfinite(arr)) and np.all(arr == np.round(arr))):
                raise not_int
        elif kind not in "iu":
            raise CtxsslError(f"labels file {path} holds {arr.dtype} values, not integer labels", _LABELS_FIX)
        labels = arr.astype(np.int64)
    else:
        try:
            labels = np.array([int(w) for w in decode_text(data, f"labels file {path}", _LABELS_FIX).split()],
                              np.int64)
        except (ValueError, OverflowError):
            raise not_int from None
    if len(labels) != n:
        raise CtxsslError(f"labels file {path} has {len(labels)} labels but its split list has {n} objects",
                          "pass the labels file that belongs to that split list")
    if len(labels) and labels.min() < 0:
        raise CtxsslError(f"labels file {path} holds negative labels", "labels must be class indices 0..K-1")
    if len(labels) and labels.max() > MAX_LABEL:
        raise CtxsslError(f"labels file {path} holds label {labels.max()}", f"labels must be class indices 0..K-1 "
                          f"with K at most {MAX_LABEL + 1:,}")
    return labels


def _first_duplicate(keys):
    seen = set()
    for k in keys:
        if k in seen:
            return k
        seen.add(k)
    return None

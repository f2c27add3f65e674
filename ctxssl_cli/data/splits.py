"""Train/val splits by object: a deterministic class-stratified split, and the published SIE split files.

The published 3DIEBench split (SIE repository, `data/train_images.npy`, `val_images.npy`, `train_labels.npy`,
`val_labels.npy`, SPEC §3.2) holds object paths "SYNSET/OBJ_ID" (sometimes with a leading "/") and int labels.
We load them with allow_pickle=False (string arrays of dtype '<U..' need no pickle) and also accept plain
text files with one entry per line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ctxssl_cli.errors import CtxsslError


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


def read_split_list(path) -> list[str]:
    """Object keys 'SYNSET/OBJ_ID' from a published .npy split file or a text file (one per line)."""
    path = Path(path)
    if not path.is_file():
        raise CtxsslError(f"split file {path} does not exist", "check the path given to --train-list/--val-list")
    if path.suffix == ".npy":
        arr = _load_npy(path)
        if arr.dtype.kind not in "US":
            raise CtxsslError(f"split file {path} holds {arr.dtype} values, not object paths",
                              "pass the *_images.npy file (object paths), or a text file with one "
                              "SYNSET/OBJ_ID per line")
        entries = [e.decode() if isinstance(e, bytes) else str(e) for e in arr.reshape(-1).tolist()]
    else:
        entries = [ln for ln in path.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    keys = [normalise_key(e) for e in entries]
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
    if not path.is_file():
        raise CtxsslError(f"labels file {path} does not exist", "check the path given to --train-labels/--val-labels")
    try:
        if path.suffix == ".npy":
            arr = _load_npy(path).reshape(-1)
            if arr.dtype.kind not in "iu" and not (arr.dtype.kind == "f" and np.all(arr == np.round(arr))):
                raise ValueError(arr.dtype)
            labels = arr.astype(np.int64)
        else:
            labels = np.array([int(ln) for ln in path.read_text().split()], np.int64)
    except ValueError:
        raise CtxsslError(f"labels file {path} does not hold integer labels",
                          "pass the *_labels.npy file, or a text file with one integer per line") from None
    if len(labels) != n:
        raise CtxsslError(f"labels file {path} has {len(labels)} labels but its split list has {n} objects",
                          "pass the labels file that belongs to that split list")
    if len(labels) and labels.min() < 0:
        raise CtxsslError(f"labels file {path} holds negative labels", "labels must be class indices 0..K-1")
    return labels


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise CtxsslError(f"{path} needs pickle to load (an object array); ctxssl never unpickles files",
                              "re-save it as a text list: one entry per line "
                              "(e.g. `open('f.txt','w').write('\\n'.join(map(str, arr)))`)") from None
        raise CtxsslError(f"{path} is not a readable .npy file ({e})", "re-download or re-save it") from None
    except OSError as e:
        raise CtxsslError(f"{path} is not a readable .npy file ({e})", "re-download or re-save it") from None


def _first_duplicate(keys):
    seen = set()
    for k in keys:
        if k in seen:
            return k
        seen.add(k)
    return None

"""The evaluation protocol end to end (SPEC §4): embeddings (computed once, cached by checkpoint and data
hashes) -> R² pair probes, retrieval MRR/H@k, linear and kNN top-1 -> one report dict.

Every probe trains on cached embeddings; nothing re-encodes an image after the single encoder pass per
split. Evaluation pairs and probe initialisations are fixed by seeds; no sample is ever dropped.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ctxssl_cli import embed as E
from ctxssl_cli.data.rotations import COLOR_SLICE, ROTATION_SLICE, euler_xyz_to_matrix, relative_action
from ctxssl_cli.errors import CtxsslError
from ctxssl_cli.evaluate.metrics import knn_top1, mrr_hits, retrieval_ranks, variance_share
from ctxssl_cli.evaluate.probes import ProbeSettings, eval_pairs, fit_pair_probe, linear_probe_top1
from ctxssl_cli.runs import LoadedRun


@dataclass
class EvalSettings:
    lengths: list[int]
    modes: list[str] = field(default_factory=lambda: list(E.MODES))
    r2_kind: str = "sklearn"  # "sklearn" (variance-weighted, per-dimension means) or "paper" (one global mean)
    train_views_per_object: int = 10  # train views embedded per object for the probes (seeded subset)
    pairs_per_object: int = 10  # fixed (seeded) view pairs per object for the R² probes, train and val
    pair_seed: int = 0
    knn_k: int = 200
    knn_t: float = 0.1
    probe: ProbeSettings = field(default_factory=ProbeSettings)
    batch_size: int = 256


def _embeddings(run: LoadedRun, split: str, s: EvalSettings, context: E.Context, given: dict, cache_dir: Path,
                progress, timings: dict) -> dict[str, torch.Tensor]:
    retrieval = split == "val"
    vpo = s.train_views_per_object if split == "train" else None
    meta = E.embeddings_metadata(run, split, s.modes, s.lengths, context, retrieval, vpo)
    if split in given:
        tensors, gmeta = given[split]
        missing = [f"z.{m}.{c}" for m in s.modes for c in s.lengths if f"z.{m}.{c}" not in tensors]
        if missing or (retrieval and f"q.{s.modes[0]}.{s.lengths[0]}" not in tensors):
            raise CtxsslError(f"the given {split} embeddings lack {missing[0] if missing else 'retrieval queries'}",
                              "embed with the same modes and lengths (and --retrieval for val), or omit --embeddings")
        return tensors
    path = cache_dir / f"{split}-{E.cache_key(meta)}.safetensors"
    if path.is_file():
        tensors, _ = E.load_embeddings(path)
        return tensors
    t0 = time.perf_counter()
    tensors = E.embed_split(run, split, s.modes, s.lengths, context, vpo, retrieval, s.batch_size, progress=progress)
    timings[f"embed_{split}_s"] = time.perf_counter() - t0
    E.save_embeddings(path, tensors, meta)
    return tensors


def check_given(run: LoadedRun, files: list[Path]) -> dict:
    """Embeddings files passed with --embeddings: they must come from this checkpoint and dataset."""
    given = {}
    for f in files:
        tensors, meta = E.load_embeddings(f)
        if meta.get("checkpoint_sha256") != run.checkpoint_sha256:
            raise CtxsslError(f"{f} was made from another checkpoint ({meta.get('checkpoint', '?')})",
                              "embed again with this checkpoint, or omit --embeddings to compute them")
        if meta.get("data_manifest_sha256") != run.data.manifest_sha256:
            raise CtxsslError(f"{f} was made from another dataset ({meta.get('data', '?')})",
                              "embed again with this dataset, or omit --embeddings")
        given[meta["split"]] = (tensors, meta)
    return given


def _pair_arrays(t: dict[str, torch.Tensor], key: str, pairs, canonical: bool):
    obj, v1, v2 = pairs
    e = t[key].numpy()
    lat = t["latents"].numpy()
    target = relative_action(lat[obj, v1], lat[obj, v2], canonical=canonical)
    return e[obj, v1], e[obj, v2], target


def factor_features(latents: np.ndarray) -> dict[str, np.ndarray]:
    """Per-view features of each latent factor, continuous and wrap-free, for `variance_share`: rotation ->
    its 3x3 matrix (9), color -> cos and sin of 2 pi x (floor hue, light hue) (4). latents (..., 7) -> (M, K)."""
    lat = latents.reshape(-1, latents.shape[-1]).astype(np.float64)
    ang = 2 * np.pi * lat[:, [3, 6]]
    return {"rotation": euler_xyz_to_matrix(lat[:, :3]).reshape(-1, 9), "color": np.c_[np.cos(ang), np.sin(ang)]}


def _put(section: dict, name: str, value) -> None:
    """Store a result under its report key: "features" as is, "mode@c" as section[mode][c]."""
    if name == "features":
        section["features"] = value
    else:
        m, c = name.split("@")
        section.setdefault(m, {})[c] = value


def evaluate_run(run: LoadedRun, s: EvalSettings, given_files: list[Path], cache_dir: Path, progress=None,
                 log=lambda msg: None) -> dict:
    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    context = E.default_context(run)
    given = check_given(run, given_files)
    tr = _embeddings(run, "train", s, context, given, cache_dir, progress, timings)
    va = _embeddings(run, "val", s, context, given, cache_dir, progress, timings)
    canonical = run.spec.data.canonical_quat
    keys = {"features": "h"} | {f"{m}@{c}": f"z.{m}.{c}" for m in s.modes for c in s.lengths}
    report: dict = {"r2": {}, "share": {}, "mrr": {}, "top1": {}, "knn": {}}

    # ---- equivariance: R² of the relative rotation (MLP probe) and color (linear probe) --------------
    t0 = time.perf_counter()
    n_tr, v_tr = tr["h"].shape[:2]
    n_va, v_va = va["h"].shape[:2]
    tr_pairs = eval_pairs(n_tr, v_tr, s.pairs_per_object, s.pair_seed)
    va_pairs = eval_pairs(n_va, v_va, s.pairs_per_object, s.pair_seed + 1)
    for name, key in keys.items():
        a1, a2, at = _pair_arrays(tr, key, tr_pairs, canonical)
        b1, b2, bt = _pair_arrays(va, key, va_pairs, canonical)
        rot = fit_pair_probe(a1, a2, at[:, ROTATION_SLICE], b1, b2, bt[:, ROTATION_SLICE], "mlp", s.probe,
                             s.r2_kind, device=str(run.device))
        col = fit_pair_probe(a1, a2, at[:, COLOR_SLICE], b1, b2, bt[:, COLOR_SLICE], "linear", s.probe,
                             s.r2_kind, device=str(run.device))
        _put(report["r2"], name, {"rotation": rot["r2"], "color": col["r2"]})
        log(f"R² {name}: rotation {rot['r2']:.3f}  color {col['r2']:.3f}")
    timings["r2_probes_s"] = time.perf_counter() - t0

    # ---- variance share: how much of each embedding the factor occupies (fit on train, report on val) --
    f_tr, f_va = factor_features(tr["latents"].numpy()), factor_features(va["latents"].numpy())
    for name, key in keys.items():
        e_tr = tr[key].reshape(n_tr * v_tr, -1).numpy()
        e_va = va[key].reshape(n_va * v_va, -1).numpy()
        _put(report["share"], name, {f: variance_share(e_tr, f_tr[f], e_va, f_va[f]) for f in ("rotation", "color")})

    # ---- retrieval on val: query = view 0 with the action 0 -> j; gallery = the object's views ---------
    t0 = time.perf_counter()
    j = np.arange(1, v_va)  # every other embedded view of the object is a target once
    for m in s.modes:
        for c in s.lengths:
            z = va[f"z.{m}.{c}"].numpy()  # (N, V, F)
            q = va[f"q.{m}.{c}"].numpy()  # (N, V, F): q[:, j] is view 0 moved by the action 0 -> j
            query = q[:, j].reshape(-1, q.shape[-1])  # (N*(V-1), F)
            owner = np.repeat(np.arange(n_va), len(j))  # query -> its object's gallery z[owner] (V, F)
            ranks = retrieval_ranks(query, z, np.tile(j, n_va), gallery_of=owner)
            report["mrr"].setdefault(m, {})[str(c)] = mrr_hits(ranks)
    timings["retrieval_s"] = time.perf_counter() - t0

    # ---- invariance: linear-probe and weighted-kNN top-1 on every embedded view ----------------------
    t0 = time.perf_counter()
    n_classes = len(run.data.classes)
    y_tr = np.repeat(tr["labels"].numpy(), v_tr)
    y_va = np.repeat(va["labels"].numpy(), v_va)
    cls_keys = {"features": "h"} | {f"{m}@{c}": f"z.{m}.{c}" for m in s.modes for c in sorted({min(s.lengths), max(s.lengths)})}
    for name, key in cls_keys.items():
        xtr = tr[key].reshape(n_tr * v_tr, -1).numpy()
        xva = va[key].reshape(n_va * v_va, -1).numpy()
        top1 = linear_probe_top1(xtr, y_tr, xva, y_va, n_classes, s.probe, device=str(run.device))
        knn = knn_top1(xtr, y_tr, xva, y_va, k=s.knn_k, temperature=s.knn_t, n_classes=n_classes,
                       device=str(run.device))
        _put(report["top1"], name, top1)
        _put(report["knn"], name, knn)
    timings["classification_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_start

    report["meta"] = {
        "checkpoint": {"path": str(run.checkpoint), "sha256": run.checkpoint_sha256, "step": run.step,
                       "name": run.spec.name},
        "data": {"path": str(run.data.root), "manifest_sha256": run.data.manifest_sha256,
                 "train_objects": int(n_tr), "val_objects": int(n_va), "train_views_embedded": int(v_tr),
                 "val_views": int(v_va)},
        "settings": {**{k: v for k, v in asdict(s).items() if k != "probe"}, "probe": asdict(s.probe),
                     "context": context.source, "context_pairs": int(len(context.obj)),
                     "r2_definition": ("sklearn r2_score, multioutput='variance_weighted' (per-dimension target means)"
                                       if s.r2_kind == "sklearn" else
                                       "paper: 1 - SSE / sum of squares around ONE global target mean")},
        "timings": timings,
    }
    return report

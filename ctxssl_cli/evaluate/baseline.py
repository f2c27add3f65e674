"""`ctxssl evaluate` on a baseline run (SimCLR, VICReg, EquiMod, SIE, SEN; SPEC §7 "Evaluation", §4).

What the paper reports for a baseline, on its encoder features h (the representation every method shares):
- equivariance: the published R² probes (paper_probes.py) on concat(h(x), h(y)), h raw, both R² definitions;
- the variance share of each factor in h (as for ContextSSL's features row);
- invariance: linear-probe and weighted-kNN top-1 on h;
- for methods with an action-conditioned predictor (EquiMod, SEN, SIE): retrieval on val. For each val object
  the query is the predictor applied to view 0's equivariant embedding z_e with the action 0 -> j (every
  j >= 1 once), the gallery is the z_e of the object's other views (view 0, the query's own source, excluded),
  ranked by cosine similarity (metrics.py retrieval_ranks) -> MRR, H@1/2/5/10 under mrr["predictor"].
Sections that do not apply (every context mode and length; MRR for SimCLR and VICReg) are absent, never
zero-filled. The features are encoded once per split (no embeddings cache: one encoder pass is the whole cost).
Baselines on augment2d datasets are refused for now (training refuses them too).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ctxssl_cli.data.actions import relative_action_for
from ctxssl_cli.data.schema import VIEWS3D, ActionSchema
from ctxssl_cli.embed import ProgressFactory, encode_views, track
from ctxssl_cli.errors import CtxsslError
from ctxssl_cli.evaluate.metrics import knn_top1, mrr_hits, retrieval_ranks, variance_share
from ctxssl_cli.evaluate.paper_probes import PaperProbeSettings, fit_paper_probes
from ctxssl_cli.evaluate.pipeline import R2_KINDS, EvalResult, EvalSettings, factor_features
from ctxssl_cli.evaluate.probes import eval_pairs, linear_probe_top1
from ctxssl_cli.runs import LoadedRun

TRAIN_VIEW_SEED = 0  # the seeded subset of train views, as embed.embed_split draws it (--train-views)
GALLERY = "the object's other val views (view 0, the query's own source, excluded); cosine similarity"


def _views(n_views: int, per_object: int | None) -> np.ndarray:
    """The embedded views of each object: all, or the seeded subset `ctxssl embed` would pick."""
    if per_object and per_object < n_views:
        return np.sort(np.random.default_rng([TRAIN_VIEW_SEED, 0x71E5]).choice(n_views, per_object, replace=False))
    return np.arange(n_views)


def encode_split(run: LoadedRun, split_name: str, views: np.ndarray, batch_size: int,
                 progress: ProgressFactory | None) -> torch.Tensor:
    """h of every object's `views`, object-major: (N, V, F) float32 on the CPU."""
    n = run.split(split_name).n_objects
    obj, view = np.repeat(np.arange(n), len(views)), np.tile(views, n)
    return encode_views(run, split_name, obj, view, batch_size, progress, f"encode {split_name}").reshape(
        n, len(views), -1)


@torch.no_grad()
def predictor_retrieval(model, h: torch.Tensor, latents: np.ndarray, canonical: bool, device,
                        batch: int = 1024, schema: ActionSchema = VIEWS3D) -> dict[str, float]:
    """MRR and H@k of the predictor on val: h (N, V, F) features, latents (N, V, L) -> mrr_hits.

    Query (object i, j >= 1): P(z_e(i, 0), a(0 -> j)); gallery: z_e(i, 1..V-1); target: view j."""
    n, v, f = h.shape
    if v < 2:
        raise CtxsslError(f"the val split has {v} view per object; retrieval needs at least 2",
                          "prepare the dataset with more views")
    z = torch.cat([model.equivariant(h.reshape(-1, f)[s:s + batch].to(device)).float().cpu()
                   for s in range(0, n * v, batch)]).reshape(n, v, -1)  # (N, V, D)
    j = np.arange(1, v)
    action = relative_action_for(schema, np.repeat(latents[:, :1], v - 1, axis=1), latents[:, 1:],
                                 canonical=canonical)
    action = torch.as_tensor(action.reshape(n * (v - 1), -1))  # (N*(V-1), A): view 0 -> view j
    source = z[:, 0].repeat_interleave(v - 1, dim=0)  # (N*(V-1), D)
    query = torch.cat([model.predict(source[s:s + batch].to(device), action[s:s + batch].to(device)).float().cpu()
                       for s in range(0, len(source), batch)])  # (N*(V-1), D)
    ranks = retrieval_ranks(query.numpy(), z[:, 1:].numpy(), np.tile(j - 1, n),
                            gallery_of=np.repeat(np.arange(n), v - 1))
    return mrr_hits(ranks)


def check_applicable(run: LoadedRun, s: EvalSettings, embeddings: list[Path]) -> None:
    """Options that only mean something for ContextSSL are errors on a baseline, not silently ignored; so is a
    baseline on a dataset of another schema than views3d (not supported yet)."""
    check_schema(run)
    if s.lengths:
        raise CtxsslError(f"--context-length applies to ContextSSL runs; {run.checkpoint} is a {run.spec.method} run "
                          "(no context)", "drop --context-length")
    if embeddings:
        raise CtxsslError(f"--embeddings files hold ContextSSL's context-conditioned embeddings; {run.checkpoint} is a "
                          f"{run.spec.method} run", "drop --embeddings (a baseline is evaluated from its checkpoint)")


def check_schema(run: LoadedRun) -> None:
    if run.schema != VIEWS3D:
        raise CtxsslError(f"{run.checkpoint} is a {run.spec.method} run on a {run.schema.name} dataset: baselines on "
                          f"{run.schema.name} datasets are not supported yet",
                          "evaluate ContextSSL runs on this dataset, or baselines on a 3D-views dataset")


def evaluate_baseline(run: LoadedRun, s: EvalSettings, progress: ProgressFactory | None = None,
                      log: Callable[[str], None] = lambda msg: None) -> dict:
    """Every metric that applies to the baseline `run` -> the report dict (report.py's layout)."""
    from ctxssl_cli.methods import METHODS

    check_schema(run)
    schema = run.schema
    factors = schema.factor_names
    method = METHODS[run.spec.method]
    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    tr_split, va_split = run.split("train"), run.split("val")
    tr_views = _views(tr_split.n_views, s.train_views_per_object)
    t0 = time.perf_counter()
    h_tr = encode_split(run, "train", tr_views, s.batch_size, progress)  # (N, V, F)
    timings["embed_train_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    h_va = encode_split(run, "val", np.arange(va_split.n_views), s.batch_size, progress)  # (M, W, F)
    timings["embed_val_s"] = time.perf_counter() - t0
    lat_tr = tr_split.latents[:, tr_views]  # (N, V, L)
    lat_va = va_split.latents  # (M, W, L)
    (n_tr, v_tr), (n_va, v_va) = h_tr.shape[:2], h_va.shape[:2]
    report: dict = {"r2": {}, "r2_definitions": {k: {} for k in R2_KINDS}, "share": {}, "top1": {}, "knn": {}}

    # ---- equivariance: the published R² probes on h pairs ---------------------------------------------------
    with track(progress, "R² probes (published protocol)", s.probe_epochs) as bar:
        t0 = time.perf_counter()
        fitted = fit_paper_probes({"features": h_tr}, lat_tr, {"features": h_va}, lat_va,
                                  eval_pairs(n_va, v_va, s.pairs_per_object, s.pair_seed + 1), {"features": False},
                                  PaperProbeSettings(s.probe_epochs, schema=schema), device=str(run.device),
                                  on_epoch=lambda e: bar.advance(1, f"epoch {e}"))
        probe_meta = fitted.pop("_meta")
        cells = fitted["features"]
        for kind in R2_KINDS:
            report["r2_definitions"][kind]["features"] = {f: cells[f][kind] for f in factors}
        report["r2"]["features"] = {f: cells[f][s.r2_kind] for f in factors}
        log("R² features: " + "  ".join(f"{f} {cells[f][s.r2_kind]:.3f}" for f in factors) + f"  ({s.r2_kind} R²)")
        timings["r2_probes_s"] = time.perf_counter() - t0

    with track(progress, "retrieval and top-1", 2 + method.predictor) as bar:
        e_tr, e_va = h_tr.reshape(n_tr * v_tr, -1).numpy(), h_va.reshape(n_va * v_va, -1).numpy()
        f_tr, f_va = factor_features(lat_tr, schema), factor_features(lat_va, schema)
        report["share"]["features"] = {f: variance_share(e_tr, f_tr[f], e_va, f_va[f]) for f in factors}
        bar.advance(1, "variance share")
        if method.predictor:  # ---- retrieval with the action-conditioned predictor, on val ------------------
            t0 = time.perf_counter()
            report["mrr"] = {"predictor": predictor_retrieval(run.model, h_va, lat_va, run.spec.data.canonical_quat,
                                                              run.device, schema=schema)}
            timings["retrieval_s"] = time.perf_counter() - t0
            bar.advance(1, "retrieval")
        t0 = time.perf_counter()  # ---- invariance: linear-probe and weighted-kNN top-1 on h -----------------
        n_classes = len(run.data.classes)
        y_tr = np.repeat(tr_split.labels.astype(np.int64), v_tr)
        y_va = np.repeat(va_split.labels.astype(np.int64), v_va)
        report["top1"]["features"] = linear_probe_top1(e_tr, y_tr, e_va, y_va, n_classes, s.probe,
                                                       device=str(run.device))
        report["knn"]["features"] = knn_top1(e_tr, y_tr, e_va, y_va, k=s.knn_k, temperature=s.knn_t,
                                             n_classes=n_classes, device=str(run.device))
        timings["classification_s"] = time.perf_counter() - t0
        bar.advance(1, "top-1")
    timings["total_s"] = time.perf_counter() - t_start

    settings = {k: v for k, v in asdict(s).items() if k not in ("probe", "lengths", "modes")}
    report["meta"] = {
        "schema": schema.to_manifest(),
        "method": method.title,
        "checkpoint": {"path": str(run.checkpoint), "sha256": run.checkpoint_sha256, "step": run.step,
                       "name": run.spec.name, "method": run.spec.method},
        "data": {"path": str(run.data.root), "manifest_sha256": run.data.manifest_sha256,
                 "train_objects": int(n_tr), "val_objects": int(n_va), "train_views_embedded": int(v_tr),
                 "val_views": int(v_va)},
        "settings": {**settings, "classification_probe": asdict(s.probe), "r2": s.r2_kind,
                     "r2_probe": {**probe_meta, "protocol": "paper (published eval_equivariance.py)", "lr": 1e-3,
                                  "batch_size": 256, "hidden": 1024, "seed": 42, "h_raw": True,
                                  "quaternion_sign": "scipy (not canonicalised)"},
                     "embedding": "encoder features h (the baselines have no context)",
                     **({"retrieval": GALLERY} if method.predictor else {}),
                     "r2_definition": ("sklearn r2_score, multioutput='variance_weighted' (per-dimension target means)"
                                       if s.r2_kind == "sklearn" else
                                       "paper: 1 - SSE / sum of squares around ONE global target mean")},
        "timings": timings,
    }
    return report


def evaluate_baseline_checkpoint(run: LoadedRun, settings: EvalSettings, embeddings: list[Path],
                                 out_dir: Path | None, progress: ProgressFactory | None = None,
                                 log: Callable[[str], None] = lambda msg: None) -> EvalResult:
    """pipeline.evaluate_checkpoint for a baseline run: evaluate it and write the report (default RUN/eval)."""
    from ctxssl_cli.evaluate.report import write_report

    check_applicable(run, settings, embeddings)
    target = Path(out_dir) if out_dir is not None else run.checkpoint.parent / "eval"
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CtxsslError(f"cannot make the report folder {target} ({e.strerror or e})",
                          "choose another --out") from None
    log(f"checkpoint: {run.checkpoint} (step {run.step}, {run.spec.method})  data: {run.data.root}")
    report = evaluate_baseline(run, settings, progress=progress, log=log)
    return EvalResult(report, target, write_report(report, target))

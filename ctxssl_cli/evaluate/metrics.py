"""Metrics on cached embeddings (SPEC §4): R², retrieval ranks -> MRR / H@k, weighted-kNN top-1.

Pure functions of arrays: no training, no I/O, no model. Each one is checked in tests/test_metrics.py
against an independent naive computation (sklearn, a Python loop, a sort).
"""

from __future__ import annotations

import numpy as np
import torch

R2_KINDS = ("sklearn", "paper")


def r2_score(y_true: np.ndarray, y_pred: np.ndarray, kind: str = "sklearn") -> float:
    """Coefficient of determination of a multi-output regression, over all N samples and D outputs.

    kind="sklearn" (the default, SPEC §4): `sklearn.metrics.r2_score(multioutput="variance_weighted")`,

        R² = 1 - sum_{n,d} (y_nd - p_nd)² / sum_{n,d} (y_nd - mean_n(y_d))²

    i.e. each output dimension is centred on its own mean, and dimensions weigh by their variance.

    kind="paper": the published SIE/ContextSSL probe code, which centres every output dimension on ONE
    global mean of all targets,

        R² = 1 - sum_{n,d} (y_nd - p_nd)² / sum_{n,d} (y_nd - mean_{n,d}(y))²

    Its denominator is never smaller than the sklearn one (a global mean fits worse than per-dimension means),
    so "paper" >= "sklearn" for the same predictions; use it only to compare with published numbers.

    Both: 1 for a perfect prediction, 0 for predicting the (per-dimension) mean, unbounded below. Constant
    targets follow sklearn: 1.0 if the prediction is exact, else 0.0. 1-d inputs are one output dimension.
    Computed in float64.
    """
    if kind not in R2_KINDS:
        raise ValueError(f"unknown R² kind {kind!r}; expected one of {R2_KINDS}")
    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_pred, dtype=np.float64)
    if y.shape != p.shape:
        raise ValueError(f"y_true {y.shape} and y_pred {p.shape} differ in shape")
    if y.ndim == 1:
        y, p = y[:, None], p[:, None]
    if y.ndim != 2 or y.shape[0] == 0:
        raise ValueError(f"expected (N, D) targets with N > 0, got {y.shape}")
    sse = float(((y - p) ** 2).sum())
    centre = y.mean(axis=0, keepdims=True) if kind == "sklearn" else y.mean()
    sst = float(((y - centre) ** 2).sum())
    if sst == 0.0:
        return 1.0 if sse == 0.0 else 0.0
    return 1.0 - sse / sst


def _unit(x: np.ndarray) -> np.ndarray:
    """L2-normalise the last axis in float64 (zero vectors stay zero)."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _ranks_from_sims(sim: np.ndarray, target: np.ndarray, tie_tol: float) -> np.ndarray:
    """sim (b, G), target (b,) -> 1 + #(better than the target) + #(others tied with it)."""
    s_t = sim[np.arange(len(sim)), target][:, None]  # (b, 1)
    # `>= s_t - tol` counts the target itself once, which supplies the "1 +".
    return (sim >= s_t - tie_tol).sum(1)


def retrieval_ranks(query: np.ndarray, gallery: np.ndarray, target: np.ndarray,
                    gallery_of: np.ndarray | None = None, tie_tol: float = 1e-6,
                    block_values: int = 1 << 23) -> np.ndarray:
    """1-based rank of each query's target among its own gallery, by cosine similarity.

    query (Q, D); gallery (Q, G, D), one gallery per query; target (Q,) index into G.
    Many queries per gallery (SPEC §4: 49 queries per object): pass gallery (N, G, D) once and
    `gallery_of` (Q,), the gallery row of each query, rather than repeating galleries (which for 3DIEBench's
    val split would take ~50 GB).

    Ties count against the query (the conservative choice):

        rank = 1 + #{g : s_g > s_t + tol} + #{g != t : |s_g - s_t| <= tol}

    with tol = `tie_tol` (default 1e-6, about the precision of a cosine of float32 embeddings), so a
    collapsed representation (all similarities equal up to rounding) gets rank G, never a lucky 1.
    Similarities are computed in float64, in blocks of about `block_values` numbers. Returns (Q,) int64.
    """
    query, gallery = np.asarray(query), np.asarray(gallery)
    target = np.asarray(target, dtype=np.int64)
    q_n = query.shape[0]
    if query.ndim != 2 or gallery.ndim != 3 or gallery.shape[-1] != query.shape[-1]:
        raise ValueError(f"expected query (Q, D) and gallery (*, G, D), got {query.shape} and {gallery.shape}")
    n_gal, g_n, dim = gallery.shape
    if gallery_of is None:
        if n_gal != q_n:
            raise ValueError(f"{q_n} queries but {n_gal} galleries (pass gallery_of to share them)")
        gallery_of = np.arange(q_n)
    gallery_of = np.asarray(gallery_of, dtype=np.int64)
    if target.shape != (q_n,) or gallery_of.shape != (q_n,):
        raise ValueError(f"target {target.shape} and gallery_of {gallery_of.shape} must be ({q_n},)")
    if q_n and (target.min() < 0 or target.max() >= g_n or gallery_of.min() < 0 or gallery_of.max() >= n_gal):
        raise ValueError(f"target must index the {g_n} gallery items and gallery_of the {n_gal} galleries")
    ranks = np.empty(q_n, dtype=np.int64)
    if q_n == 0:
        return ranks
    # Group the queries by gallery, then batch the groups of equal size r: (B, r, D) @ (B, D, G).
    order = np.argsort(gallery_of, kind="stable")
    ids, starts, counts = np.unique(gallery_of[order], return_index=True, return_counts=True)
    for r in np.unique(counts):
        groups = np.flatnonzero(counts == r)
        per_block = max(1, block_values // ((r + g_n) * dim))
        for s in range(0, len(groups), per_block):
            grp = groups[s:s + per_block]
            qi = order[starts[grp][:, None] + np.arange(r)]  # (B, r) query indices
            q = torch.from_numpy(_unit(query[qi]))  # (B, r, D)
            g = torch.from_numpy(_unit(gallery[ids[grp]]))  # (B, G, D)
            sim = torch.bmm(q, g.transpose(1, 2)).numpy()  # (B, r, G); torch passes the transpose to BLAS
            ranks[qi.ravel()] = _ranks_from_sims(sim.reshape(-1, g_n), target[qi.ravel()], tie_tol)
    return ranks


def mrr_hits(ranks: np.ndarray, ks=(1, 2, 5, 10)) -> dict[str, float]:
    """Mean reciprocal rank and hit rates: {"mrr": mean(1/rank), "h@k": fraction with rank <= k}."""
    r = np.asarray(ranks, dtype=np.float64)
    if r.size == 0 or r.min() < 1:
        raise ValueError("mrr_hits needs at least one rank, all >= 1")
    out = {"mrr": float((1.0 / r).mean())}
    for k in ks:
        out[f"h@{k}"] = float((r <= k).mean())
    return out


def knn_top1(train_x, train_y, test_x, test_y, k: int = 200, temperature: float = 0.1,
             n_classes: int | None = None, batch: int = 1024, device="cpu", overwrite_train: bool = False,
             block_values: int = 1 << 24) -> float:
    """Weighted k-nearest-neighbour top-1 accuracy (Wu et al. 2018, InstDisc; as DINO evaluates).

    Features are L2-normalised; each test sample takes its k most cosine-similar train samples (k clipped
    to the train size), each votes for its class with weight exp(sim / temperature); the class with the
    largest total wins (ties: the lower class index). No training, no sample dropped: the accuracy is over
    every test sample. Runs on `device` in float32, `batch` test samples at a time against the train samples in
    chunks, keeping a running top-k (memory: a block of about `block_values` similarities, 64 MB, however many
    train samples: one (1024, N) block of 3DIEBench's 2 M train views would be 8.6 GB; the train side is read
    once per test batch). Returns the accuracy in [0, 1]. `overwrite_train`: the caller hands train_x over (a
    float32 array or tensor it no longer needs), so it is normalised in place instead of copied (at 3DIEBench's
    size the copy is 4 GB).
    """
    dev = torch.device(device)
    xtr = torch.as_tensor(np.asarray(train_x), dtype=torch.float32, device=dev)
    if overwrite_train and xtr.ndim == 2 and len(xtr):
        xtr.div_(xtr.norm(dim=1, keepdim=True).clamp_min_(1e-12))  # F.normalize's arithmetic, in place
    else:
        xtr = torch.nn.functional.normalize(xtr, dim=1)
    xte = torch.as_tensor(np.asarray(test_x), dtype=torch.float32)
    ytr = torch.as_tensor(np.asarray(train_y), dtype=torch.long, device=dev)
    yte = torch.as_tensor(np.asarray(test_y), dtype=torch.long)
    if xtr.ndim != 2 or xte.ndim != 2 or xtr.shape[1] != xte.shape[1]:
        raise ValueError(f"expected (N, D) train and test features, got {tuple(xtr.shape)} and {tuple(xte.shape)}")
    if len(ytr) != len(xtr) or len(yte) != len(xte) or len(xtr) == 0 or len(xte) == 0:
        raise ValueError("knn_top1 needs non-empty features with one label each")
    if n_classes is None:
        n_classes = int(max(ytr.max().item(), yte.max().item())) + 1
    k = min(k, len(xtr))
    chunk = max(k, block_values // batch)  # train rows per similarity block
    correct = 0
    for s in range(0, len(xte), batch):
        q = torch.nn.functional.normalize(xte[s:s + batch].to(dev), dim=1)  # (b, D)
        sim, idx = topk_similar(q, xtr, k, chunk)  # (b, k)
        votes = torch.zeros(len(q), n_classes, device=dev, dtype=torch.float64)
        votes.scatter_add_(1, ytr[idx], (sim.double() / temperature).exp())  # (b, C)
        pred = votes.argmax(1).cpu()  # first maximum on ties
        correct += int((pred == yte[s:s + batch]).sum())
    return correct / len(xte)


def topk_similar(q: torch.Tensor, x: torch.Tensor, k: int, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(q @ x.T).topk(k, dim=1) over `chunk` rows of x at a time: (b, k) values and row indices of x, in
    descending order. Each chunk's own top-k is merged with the running one ((b, 2k) candidates), so memory is
    one (b, chunk) block and a few (b, 2k) ones. The rows are those of the one-block top-k, the similarities
    equal up to float32 rounding (BLAS may sum in another order for another block shape); among rows of equal
    similarity at the k-th place, which ones are kept may differ. Needs 1 <= k <= len(x) and chunk >= k."""
    if not 1 <= k <= len(x) or chunk < k:
        raise ValueError(f"topk_similar needs 1 <= k <= {len(x)} rows and chunk >= k, got k = {k}, chunk = {chunk}")
    best = None
    for c in range(0, len(x), chunk):
        top_sim, top_idx = (q @ x[c:c + chunk].T).topk(min(k, len(x) - c), dim=1)
        top_idx += c
        if best is not None:
            cand_sim, cand_idx = torch.cat([best[0], top_sim], dim=1), torch.cat([best[1], top_idx], dim=1)
            top_sim, pick = cand_sim.topk(k, dim=1)
            top_idx = cand_idx.gather(1, pick)
        best = top_sim, top_idx
    return best


def variance_share(train_e: np.ndarray, train_f: np.ndarray, test_e: np.ndarray, test_f: np.ndarray,
                   chunk: int = 16384) -> float:
    """Fraction of an embedding's variance that a latent factor explains linearly (out of sample).

    A least-squares map with intercept from the factor's features f (N, K) to the embedding e (N, F) is fit on
    the train rows; the result is the variance-weighted R² of predicting the test embeddings from their
    factors, `r2_score(test_e, pred, "sklearn")`. Unlike a probe, which decodes the factor from e and so cannot
    tell a large component from a tiny one, this measures how much of e the factor occupies: near 0 when the
    factor is absent or only a faint trace, up to 1 when it is all that e encodes.

    Computed in float64 through the normal equations and per-column sums accumulated `chunk` rows at a time,
    so memory stays a few (K+1, F) matrices however many rows there are (3DIEBench's train split has 2 M views:
    a float64 copy of it is 8 GB at F = 512).
    """
    def design(f):
        return np.c_[np.asarray(f, np.float64), np.ones(len(f))]

    train_f, test_f = np.reshape(train_f, (len(train_f), -1)), np.reshape(test_f, (len(test_f), -1))
    k1, dim = train_f.shape[1] + 1, np.shape(train_e)[1]
    xtx, xte = np.zeros((k1, k1)), np.zeros((k1, dim))
    for s in range(0, len(train_e), chunk):
        x = design(train_f[s:s + chunk])
        xtx += x.T @ x
        xte += x.T @ np.asarray(train_e[s:s + chunk], np.float64)
    w, *_ = np.linalg.lstsq(xtx, xte, rcond=None)  # (K+1, F); the minimum-norm solution if rank-deficient
    sse, total, total_sq, n = 0.0, np.zeros(dim), np.zeros(dim), len(test_e)
    for s in range(0, n, chunk):
        y = np.asarray(test_e[s:s + chunk], np.float64)
        sse += float(((y - design(test_f[s:s + chunk]) @ w) ** 2).sum())
        total += y.sum(0)
        total_sq += (y ** 2).sum(0)
    sst = float((total_sq - total ** 2 / n).sum())  # sum over columns of sum_n (y - mean_n(y))^2
    if sst <= 0.0:
        return 1.0 if sse == 0.0 else 0.0
    return 1.0 - sse / sst

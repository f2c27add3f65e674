"""Metrics against independent naive computations: sklearn, loops, sorts."""

import numpy as np
import torch
import pytest
import sklearn.metrics

from ctxssl_cli.evaluate.metrics import knn_top1, mrr_hits, r2_score, retrieval_ranks, variance_share


# ---- R² ---------------------------------------------------------------------------------------------------
def _targets(seed=0, n=200, d=4):
    rng = np.random.default_rng(seed)
    y = rng.normal(size=(n, d)) * np.array([1.0, 3.0, 0.2, 1.5])[:d] + np.array([0.5, -2.0, 4.0, 0.0])[:d]
    pred = y + rng.normal(size=y.shape) * 0.7
    return y, pred


def test_r2_sklearn_equals_variance_weighted():
    y, p = _targets()
    want = sklearn.metrics.r2_score(y, p, multioutput="variance_weighted")
    assert r2_score(y, p) == pytest.approx(want, abs=1e-12)
    assert r2_score(y, p, kind="sklearn") == pytest.approx(want, abs=1e-12)


def test_r2_paper_equals_its_formula_by_loop():
    y, p = _targets(1)
    n, d = y.shape
    mean = sum(y[i, j] for i in range(n) for j in range(d)) / (n * d)  # ONE mean over every output
    sse = sum((y[i, j] - p[i, j]) ** 2 for i in range(n) for j in range(d))
    sst = sum((y[i, j] - mean) ** 2 for i in range(n) for j in range(d))
    assert r2_score(y, p, kind="paper") == pytest.approx(1 - sse / sst, abs=1e-12)
    # a global mean fits the targets worse than per-dimension means: the paper's R² is never lower
    assert r2_score(y, p, kind="paper") >= r2_score(y, p, kind="sklearn")


@pytest.mark.parametrize("kind", ["sklearn", "paper"])
def test_r2_perfect_is_one(kind):
    y, _ = _targets(2)
    assert r2_score(y, y.copy(), kind=kind) == 1.0


def test_r2_mean_prediction_is_zero():
    y, _ = _targets(3)
    assert r2_score(y, np.broadcast_to(y.mean(0), y.shape)) == pytest.approx(0.0, abs=1e-12)
    assert r2_score(y, np.full_like(y, y.mean()), kind="paper") == pytest.approx(0.0, abs=1e-12)


def test_r2_one_dimensional_and_constant_targets():
    y, p = _targets(4, d=1)
    assert r2_score(y[:, 0], p[:, 0]) == pytest.approx(sklearn.metrics.r2_score(y[:, 0], p[:, 0]), abs=1e-12)
    const = np.ones((5, 2))
    assert r2_score(const, const) == 1.0 and r2_score(const, const + 1) == 0.0  # as sklearn (force_finite)


def test_r2_rejects_bad_input():
    with pytest.raises(ValueError):
        r2_score(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError):
        r2_score(np.zeros((3, 2)), np.zeros((3, 2)), kind="torchmetrics")


# ---- retrieval ranks, MRR, H@k ----------------------------------------------------------------------------
def _brute_ranks(query, gallery, target):
    """Sort each gallery by descending cosine similarity, the target placed after every item it ties with."""
    ranks = []
    for q, g, t in zip(query, gallery, target):
        sims = [float(np.dot(q, x) / (np.linalg.norm(q) * np.linalg.norm(x))) for x in g]
        order = sorted(range(len(g)), key=lambda j: (-sims[j], j == t))  # ties: target last (conservative)
        ranks.append(order.index(t) + 1)
    return np.array(ranks)


def _gallery_with_ties(seed=0, q=60, g=12, d=5):
    """Random galleries (no accidental ties) where every third item duplicates item 0 (exact ties)."""
    rng = np.random.default_rng(seed)
    gallery = rng.normal(size=(q, g, d))
    gallery[:, 1::3] = gallery[:, 0:1]
    query = rng.normal(size=(q, d))
    target = rng.integers(0, g, size=q)
    return query, gallery, target


def test_ranks_match_brute_force_sort_with_ties():
    query, gallery, target = _gallery_with_ties()
    got = retrieval_ranks(query, gallery, target, block_values=200)  # several blocks
    want = _brute_ranks(query, gallery, target)
    assert got.dtype == np.int64 and got.shape == (len(query),)
    np.testing.assert_array_equal(got, want)
    assert (target % 3 == 1).any()  # some targets really sit in a tie group


def test_ranks_ties_count_against_the_query():
    q = np.ones((1, 4))
    gallery = np.ones((1, 10, 4))  # collapsed: every similarity equal
    assert retrieval_ranks(q, gallery, np.array([3]))[0] == 10
    # equal up to float32 rounding is still a tie; a real gap is not
    rng = np.random.default_rng(0)
    gallery = np.ones((1, 10, 4)) + rng.normal(size=(1, 10, 4)) * 1e-9
    assert retrieval_ranks(q, gallery, np.array([3]))[0] == 10
    gallery[0, :5] += rng.normal(size=(5, 4)) * 0.1  # items 0-4 clearly worse than the target
    assert retrieval_ranks(q, gallery, np.array([7]))[0] == 5


def test_ranks_shared_galleries_equal_repeated_ones():
    query, gallery, target = _gallery_with_ties(1, q=40)
    owners = np.arange(40) % 8
    shared = gallery[:8]
    got = retrieval_ranks(query, shared, target, gallery_of=owners)
    np.testing.assert_array_equal(got, retrieval_ranks(query, shared[owners], target))
    np.testing.assert_array_equal(got, _brute_ranks(query, shared[owners], target))


def test_mrr_hits_by_hand():
    ranks = np.array([1, 2, 3, 10, 11, 50])
    got = mrr_hits(ranks)
    assert got["mrr"] == pytest.approx(np.mean([1, 1 / 2, 1 / 3, 1 / 10, 1 / 11, 1 / 50]))
    assert got["h@1"] == pytest.approx(1 / 6) and got["h@2"] == pytest.approx(2 / 6)
    assert got["h@5"] == pytest.approx(3 / 6) and got["h@10"] == pytest.approx(4 / 6)
    assert list(got) == ["mrr", "h@1", "h@2", "h@5", "h@10"]


def test_mrr_from_ranks_matches_brute_force():
    query, gallery, target = _gallery_with_ties(2)
    want = _brute_ranks(query, gallery, target)
    got = mrr_hits(retrieval_ranks(query, gallery, target), ks=(1, 3))
    assert got == pytest.approx({"mrr": np.mean(1 / want), "h@1": np.mean(want <= 1), "h@3": np.mean(want <= 3)})


# ---- weighted kNN -----------------------------------------------------------------------------------------
def _naive_knn(train_x, train_y, test_x, test_y, k, t, n_classes):
    correct = 0
    tr = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    for x, y in zip(test_x, test_y):
        x = x / np.linalg.norm(x)
        sims = [float(np.dot(x, r)) for r in tr]
        nearest = sorted(range(len(tr)), key=lambda j: -sims[j])[:k]
        votes = [0.0] * n_classes
        for j in nearest:
            votes[train_y[j]] += np.exp(sims[j] / t)
        correct += int(np.argmax(votes) == y)
    return correct / len(test_x)


@pytest.mark.parametrize("k", [1, 5, 30, 1000])  # 1000 > train size: clipped
def test_knn_matches_naive_loop(k):
    rng = np.random.default_rng(k)
    centres = rng.normal(size=(4, 8))
    train_y, test_y = rng.integers(0, 4, 60), rng.integers(0, 4, 25)
    train_x = centres[train_y] + rng.normal(size=(60, 8)) * 1.2
    test_x = centres[test_y] + rng.normal(size=(25, 8)) * 1.2
    got = knn_top1(train_x, train_y, test_x, test_y, k=k, temperature=0.1, batch=7)
    assert got == pytest.approx(_naive_knn(train_x, train_y, test_x, test_y, min(k, 60), 0.1, 4))
    assert 0.3 < _naive_knn(train_x, train_y, test_x, test_y, 5, 0.1, 4)  # the task is learnable


def test_knn_counts_every_test_sample():
    train_x = np.eye(3)
    test_x = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [0, 0, 2.0]])
    assert knn_top1(train_x, np.array([0, 1, 2]), test_x, np.array([0, 1, 2, 0]), k=1, batch=3) == 0.75


def test_variance_share_measures_how_much_of_the_embedding_a_factor_takes():
    rng = np.random.default_rng(0)
    f_tr, f_te = rng.normal(size=(4000, 3)), rng.normal(size=(2000, 3))
    mix = rng.normal(size=(3, 16))
    noise_tr, noise_te = rng.normal(size=(4000, 16)), rng.normal(size=(2000, 16))
    S = float((mix ** 2).sum())  # factor variance summed over the 16 columns, per unit amplitude
    for amp in (1.0, 0.1):
        expected = amp ** 2 * S / (amp ** 2 * S + 16)  # the noise adds variance 1 per column
        e_tr, e_te = amp * f_tr @ mix + noise_tr, amp * f_te @ mix + noise_te
        share = variance_share(e_tr, f_tr, e_te, f_te)
        assert share == pytest.approx(expected, abs=0.05 * expected + 0.01)
    # an unrelated factor explains nothing (out of sample: slightly below 0 at most)
    assert abs(variance_share(noise_tr, f_tr, noise_te, f_te)) < 0.01
    # a faint factor takes a tiny share
    assert variance_share(0.01 * f_tr @ mix + noise_tr, f_tr, 0.01 * f_te @ mix + noise_te, f_te) < 0.01


def test_variance_share_in_chunks_equals_one_least_squares_fit():
    """Chunked normal equations (bounded memory at 3DIEBench scale) against a direct lstsq on all rows."""
    rng = np.random.default_rng(3)
    f_tr, f_te = rng.normal(size=(3000, 4)), rng.normal(size=(700, 4))
    mix = rng.normal(size=(4, 12))
    e_tr = (f_tr @ mix + rng.normal(size=(3000, 12))).astype(np.float32)
    e_te = (f_te @ mix + rng.normal(size=(700, 12))).astype(np.float32)
    x_tr = np.c_[f_tr, np.ones(len(f_tr))]
    w, *_ = np.linalg.lstsq(x_tr, e_tr.astype(np.float64), rcond=None)
    direct = r2_score(e_te, np.c_[f_te, np.ones(len(f_te))] @ w, "sklearn")
    for chunk in (65536, 1000, 7):
        assert variance_share(e_tr, f_tr, e_te, f_te, chunk=chunk) == pytest.approx(direct, abs=1e-10)


def test_knn_does_not_depend_on_the_test_batch():
    rng = np.random.default_rng(4)
    x_tr, x_te = rng.normal(size=(500, 8)), rng.normal(size=(90, 8))
    y_tr, y_te = rng.integers(0, 3, 500), rng.integers(0, 3, 90)
    assert knn_top1(x_tr, y_tr, x_te, y_te, k=20) == knn_top1(x_tr, y_tr, x_te, y_te, k=20, batch=7)
    mine = x_tr.astype(np.float32)
    expect = knn_top1(mine.copy(), y_tr, x_te, y_te, k=20)
    assert knn_top1(mine, y_tr, x_te, y_te, k=20, overwrite_train=True) == expect  # normalised in place, same votes
    assert np.allclose(np.linalg.norm(mine, axis=1), 1.0, atol=1e-6)  # (what the caller handed over was used up)


def test_knn_train_chunks_equal_one_block():
    """The running top-k over train chunks keeps the one-block top-k: the same rows (no near-ties in random data),
    similarities equal up to float32 rounding, so the same accuracy whatever the block size."""
    from ctxssl_cli.evaluate.metrics import topk_similar

    rng = np.random.default_rng(5)
    x = torch.nn.functional.normalize(torch.as_tensor(rng.normal(size=(503, 16)), dtype=torch.float32), dim=1)
    q = torch.nn.functional.normalize(torch.as_tensor(rng.normal(size=(40, 16)), dtype=torch.float32), dim=1)
    want_sim, want_idx = (q @ x.T).topk(25, dim=1)
    for chunk in (25, 26, 100, 502, 503, 10_000):
        sim, idx = topk_similar(q, x, 25, chunk)
        assert torch.equal(idx, want_idx) and torch.allclose(sim, want_sim, atol=1e-6, rtol=0)  # BLAS order
    y_tr, y_te = rng.integers(0, 4, 503), rng.integers(0, 4, 40)
    one = knn_top1(x.numpy(), y_tr, q.numpy(), y_te, k=25, block_values=1 << 30)
    assert all(knn_top1(x.numpy(), y_tr, q.numpy(), y_te, k=25, batch=b, block_values=v) == one
               for b, v in ((8, 8 * 30), (40, 40 * 101), (3, 1)))

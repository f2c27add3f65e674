"""Fixed evaluation pairs and the classification probe (the R² probes: test_paper_probes.py)."""

import numpy as np
import pytest

from ctxssl_cli.errors import CtxsslError
from ctxssl_cli.evaluate.probes import ProbeSettings, eval_pairs, linear_probe_top1

FAST = ProbeSettings(cls_epochs=20, cls_batch_size=500)


# ---- evaluation pairs -------------------------------------------------------------------------------------
def test_eval_pairs_fixed_and_distinct_views():
    obj, v1, v2 = eval_pairs(30, 5, 4, seed=7)
    again = eval_pairs(30, 5, 4, seed=7)
    for a, b in zip((obj, v1, v2), again):
        np.testing.assert_array_equal(a, b)
    assert obj.shape == v1.shape == v2.shape == (120,) and obj.dtype == np.int64
    np.testing.assert_array_equal(obj, np.repeat(np.arange(30), 4))  # object-major, every object
    assert (v1 != v2).all()
    assert v1.min() >= 0 and max(v1.max(), v2.max()) <= 4
    other = eval_pairs(30, 5, 4, seed=8)
    assert not (np.array_equal(v1, other[1]) and np.array_equal(v2, other[2]))


def test_eval_pairs_cover_every_ordered_pair():
    _, v1, v2 = eval_pairs(2000, 4, 3, seed=0)
    counts = np.zeros((4, 4), int)
    np.add.at(counts, (v1, v2), 1)
    off = counts[~np.eye(4, dtype=bool)]
    assert np.diag(counts).sum() == 0 and off.min() > 0.7 * off.mean()  # uniform over the 12 ordered pairs


def test_eval_pairs_need_two_views():
    with pytest.raises(CtxsslError):
        eval_pairs(10, 1, 2, seed=0)


# ---- classification probe ---------------------------------------------------------------------------------
def _clusters(n, seed, n_classes=5, d=16):
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(n_classes, d)) * 2
    y = rng.integers(0, n_classes, n)
    return (centres[y] + rng.normal(size=(n, d))).astype(np.float32), y


def test_linear_classifier_separates_clusters_deterministically():
    (xtr, ytr), (xva, yva) = _clusters(2000, 0), _clusters(499, 1)  # odd val size: nothing dropped
    a = linear_probe_top1(xtr, ytr, xva, yva, 5, FAST)
    b = linear_probe_top1(xtr, ytr, xva, yva, 5, FAST)
    assert a == b and a > 0.95
    assert a * 499 == pytest.approx(round(a * 499))  # a count over all 499 val samples


def test_linear_classifier_at_chance_on_random_labels():
    (xtr, _), (xva, _) = _clusters(1000, 2), _clusters(1000, 3)
    rng = np.random.default_rng(4)
    acc = linear_probe_top1(xtr, rng.integers(0, 5, 1000), xva, rng.integers(0, 5, 1000), 5, FAST)
    assert acc < 0.3


def test_probe_settings_validated():
    with pytest.raises(CtxsslError, match="cls_epochs"):
        ProbeSettings(cls_epochs=0)
    with pytest.raises(CtxsslError, match="cls_lr"):
        ProbeSettings(cls_lr=-1.0)
    with pytest.raises(CtxsslError, match="cls_batch_size"):
        ProbeSettings(cls_batch_size=512.0)
    ProbeSettings(cls_weight_decay=0, cls_lr=1)

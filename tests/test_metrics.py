"""Metrics against scikit-learn and a hand computation of gAUC."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from ctrsink.metrics import auc, ctr_metrics, gauc, logloss, user_decomposition


def test_auc_and_logloss_match_sklearn() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    p = np.clip(rng.random(500) * 0.6 + y * 0.3, 0, 1)
    assert auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert logloss(y, p) == pytest.approx(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7)), abs=1e-9)


def test_auc_single_class_is_nan() -> None:
    assert np.isnan(auc(np.ones(5), np.arange(5.0)))


def test_gauc_is_impression_weighted_mean_over_users_with_both_labels() -> None:
    rng = np.random.default_rng(1)
    groups = rng.integers(0, 30, 800)
    y = rng.integers(0, 2, 800)
    s = rng.random(800) + 0.2 * y
    groups[groups == 3] = 99  # one user ...
    y[groups == 99] = 1  # ... with one class only: excluded
    num = den = 0.0
    for g in np.unique(groups):
        m = groups == g
        if y[m].min() == y[m].max():
            continue
        num += m.sum() * roc_auc_score(y[m], s[m])
        den += m.sum()
    assert gauc(y, s, groups) == pytest.approx(num / den, abs=1e-12)


def test_gauc_handles_ties_like_sklearn() -> None:
    y = np.array([0, 1, 0, 1, 1, 0])
    s = np.array([0.5, 0.5, 0.2, 0.9, 0.2, 0.9])
    g = np.zeros(6, dtype=int)
    assert gauc(y, s, g) == pytest.approx(roc_auc_score(y, s))


def test_ctr_metrics_from_logits() -> None:
    y = np.array([0, 1, 1, 0])
    logits = np.array([-2.0, 1.0, 0.5, 0.1])
    m = ctr_metrics(y, logits, np.array([0, 0, 1, 1]))
    p = 1 / (1 + np.exp(-logits))
    assert m["auc"] == pytest.approx(roc_auc_score(y, p))
    assert m["gauc"] == pytest.approx(1.0)
    assert m["calibration"] == pytest.approx(p.mean() / 0.5)
    assert m["n"] == 4


def test_gauc_with_int8_labels_does_not_overflow() -> None:
    """Parquet labels are int8; P * (P + 1) / 2 must not wrap around."""
    rng = np.random.default_rng(2)
    groups = np.repeat(np.arange(4), 60)
    y = rng.integers(0, 2, 240).astype(np.int8)
    s = rng.random(240) + 0.3 * y
    assert gauc(y, s, groups) == pytest.approx(gauc(y.astype(np.float64), s, groups))
    assert 0.5 < gauc(y, s, groups) <= 1.0


def test_user_decomposition_by_hand() -> None:
    """User A (0.9+, 0.8+, 0.7-) and B (0.1-, 0.2-, 0.3+): each user ranked perfectly (gAUC 1); scored by user
    means (A 0.8, B 0.2), of the 9 positive-negative pairs 4 are won (A+ over B-) and 4 tied (same user): 6/9."""
    y = np.array([1, 1, 0, 0, 0, 1])
    s = np.array([0.9, 0.8, 0.7, 0.1, 0.2, 0.3])
    g = np.array(["A", "A", "A", "B", "B", "B"])
    d = user_decomposition(y, s, g)
    assert d["between_auc"] == pytest.approx(6 / 9)
    assert d["oracle_between_auc"] == pytest.approx(6 / 9)  # rates 2/3 and 1/3 order users the same way
    assert d["within_gauc"] == pytest.approx(1.0)
    assert np.isnan(d["user_rate_corr"])  # two users: no correlation reported
    # a third user C (mean 0.5, rate 0.5) on the same line: means and rates correlate perfectly
    d3 = user_decomposition(np.append(y, [1, 0]), np.append(s, [0.5, 0.5]), np.append(g, ["C", "C"]))
    assert d3["user_rate_corr"] == pytest.approx(1.0)

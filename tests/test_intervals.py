"""Intervals of ablation gains (ctrsink/intervals.py): the t-interval over seeds and the paired user bootstrap,
checked against hand computations on a three-user table."""

from __future__ import annotations

import itertools
import math
import time

import numpy as np
import pandas as pd
import pytest

from ctrsink.errors import CtrSinkError
from ctrsink.intervals import (
    Paired,
    paired_user_bootstrap,
    seed_user_bootstrap,
    t_interval,
    user_multiplicities,
)
from ctrsink.metrics import ctr_metrics

# three users, one positive and one negative each; model a ties within user C
ROWS = [  # user, label, logit a, logit b
    ("A", 1, 2.0, 1.0),
    ("A", 0, -1.0, 0.0),
    ("B", 1, 0.0, 0.5),
    ("B", 0, 1.0, -0.5),
    ("C", 1, 0.5, -1.0),
    ("C", 0, 0.5, 2.0),
]


def sp(x: float) -> float:
    """softplus: the log loss of logit -x for a positive (and of x for a negative)."""
    return math.log1p(math.exp(x))


def preds() -> tuple[pd.DataFrame, pd.DataFrame]:
    frame = pd.DataFrame(ROWS, columns=["user_id", "label", "a", "b"]).assign(sample_id=range(len(ROWS)))
    a = frame.rename(columns={"a": "logit"}).drop(columns="b")
    b = frame.rename(columns={"b": "logit"}).drop(columns="a").iloc[::-1]  # row order must not matter
    return a, b


def test_t_interval() -> None:
    mean, half = t_interval([1.0, 2.0, 3.0])
    # t_{0.975, 2} = 4.302653; sd = 1; half = 4.302653 / sqrt(3)
    assert mean == 2.0 and half == pytest.approx(4.302653 / math.sqrt(3), abs=1e-6)
    assert t_interval([0.5, float("nan")]) == (0.5, pytest.approx(float("nan"), nan_ok=True))
    assert all(math.isnan(v) for v in t_interval([]))


def test_deltas_by_hand() -> None:
    p = Paired.of(*preds())
    assert p.users.tolist() == ["A", "B", "C"]
    full, twice_a, only_c = [1, 1, 1], [2, 1, 0], [0, 0, 3]
    m = np.array([full, twice_a, only_c])
    # AUC a on all rows: positives 2, 0, .5 against negatives -1, 1, .5 -> 3 + 1 + (1 + 0.5 tie) = 5.5 of 9
    # AUC b: positives 1, .5, -1 against 0, -.5, 2 -> 2 + 2 + 0 = 4 of 9
    # A twice, B once: a -> pairs weighted 2*2 (A+ > A-) + 2*1 (A+ > B-) + 1*2 (B+ > A-) + 0 = 8 of 3*3; b -> 9 of 9
    # C three times: a ties (1/2), b loses (0)
    np.testing.assert_allclose(p.deltas("auc", m), [5.5 / 9 - 4 / 9, 8 / 9 - 1, 0.5 - 0], rtol=0, atol=1e-12)
    # per-user AUC: a = (1, 0, 1/2), b = (1, 1, 0), two impressions each
    gauc = [(2 * 1 + 2 * 0 + 2 * 0.5) / 6 - (2 + 2 + 0) / 6, (2 * 2 * 1 + 2 * 0) / 6 - (2 * 2 + 2) / 6, 0.5]
    np.testing.assert_allclose(p.deltas("gauc", m), gauc, rtol=0, atol=1e-12)
    loss_a = {"A": sp(-2) + sp(-1), "B": sp(0) + sp(1), "C": sp(-0.5) + sp(0.5)}
    loss_b = {"A": sp(-1) + sp(0), "B": sp(-0.5) + sp(-0.5), "C": sp(1) + sp(2)}
    expected = [
        sum(w * (loss_a[u] - loss_b[u]) for w, u in zip(row, "ABC")) / (2 * sum(row)) for row in m.tolist()
    ]
    np.testing.assert_allclose(p.deltas("logloss", m), expected, rtol=0, atol=1e-12)


def test_every_resample_matches_the_metrics_on_duplicated_rows() -> None:
    """All 27 ordered draws of 3 users: each equals ctrsink.metrics on the rows of the drawn users, repeated."""
    a, b = preds()
    p = Paired.of(a, b)
    draws = list(itertools.product(range(3), repeat=3))
    m = np.array([np.bincount(d, minlength=3) for d in draws])
    frame = a.merge(b[["sample_id", "logit"]], on="sample_id", suffixes=("_a", "_b"))
    for metric in ("auc", "gauc", "logloss"):
        got = p.deltas(metric, m)
        for row, value in zip(m, got):
            rows = frame.loc[frame.index.repeat(frame["user_id"].map(dict(zip("ABC", row))))]
            ma = ctr_metrics(rows["label"], rows["logit_a"], rows["user_id"])[metric]
            mb = ctr_metrics(rows["label"], rows["logit_b"], rows["user_id"])[metric]
            assert value == pytest.approx(ma - mb, abs=1e-12, nan_ok=True)


def test_bootstrap_is_the_percentiles_of_its_seeded_draws() -> None:
    a, b = preds()
    delta, lo, hi = paired_user_bootstrap(a, b, "auc", n_boot=200, seed=7)
    assert delta == pytest.approx(1.5 / 9)
    draws = Paired.of(a, b).deltas("auc", user_multiplicities(3, 200, np.random.default_rng(7)))
    assert (lo, hi) == tuple(np.percentile(draws[~np.isnan(draws)], [2.5, 97.5]))
    assert paired_user_bootstrap(a, b, "auc", n_boot=200, seed=7) == (delta, lo, hi)  # deterministic
    assert paired_user_bootstrap(a, b, "auc", n_boot=200, seed=8) != (delta, lo, hi)


def test_seeds_then_users() -> None:
    a, b = preds()
    a2 = a.assign(logit=a["logit"] * 0.5)  # a second seed: another variant run on the same rows
    one = seed_user_bootstrap([(a, b)], "gauc", 300, 1)
    assert one == paired_user_bootstrap(a, b, "gauc", 300, 1)
    delta, lo, hi = seed_user_bootstrap([(a, b), (a2, b)], "logloss", 300, 1)
    d1 = Paired.of(a, b).deltas("logloss", np.ones((1, 3)))[0]
    d2 = Paired.of(a2, b).deltas("logloss", np.ones((1, 3)))[0]
    assert delta == pytest.approx((d1 + d2) / 2) and lo <= delta <= hi


def test_pairs_must_cover_the_same_rows() -> None:
    a, b = preds()
    with pytest.raises(CtrSinkError, match="different test rows"):
        paired_user_bootstrap(a, b.iloc[1:], "auc", 10, 0)
    with pytest.raises(CtrSinkError, match="labels"):
        paired_user_bootstrap(a, b.assign(label=1 - b["label"]), "auc", 10, 0)


def test_thousand_resamples_of_ten_thousand_rows_take_seconds() -> None:
    rng = np.random.default_rng(0)
    n = 10_000
    users = rng.integers(0, 500, n).astype(str)
    label = (rng.random(n) < 0.4).astype(int)
    a = pd.DataFrame(
        {"sample_id": range(n), "user_id": users, "label": label, "logit": rng.normal(size=n) + label}
    )
    b = a.assign(logit=np.round(rng.normal(size=n) + 0.5 * label, 1))  # many ties
    start = time.perf_counter()
    for metric in ("auc", "gauc", "logloss"):
        delta, lo, hi = paired_user_bootstrap(a, b, metric, 1000, 0)
        assert lo < delta < hi
    assert time.perf_counter() - start < 30  # about 1 s on one free core

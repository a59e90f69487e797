"""The intervals every ablation view shows, computed in one place.

- `t_interval`: mean and half-width of a 95% t-interval over seeds (one value per seed).
- `paired_user_bootstrap`: a paired percentile bootstrap over the *users* of a test split. Both runs scored the same
  test rows; each replicate draws as many users as the split has, with replacement, and gives every row of a user
  drawn m times the weight m, in both runs at once (paired). Δ = metric(a) - metric(b) on the full split, and the
  2.5 and 97.5 percentiles of the replicates' Δ.
- `seed_user_bootstrap`: several seeds, each with its own pair of runs (and possibly its own test rows): a two-level
  bootstrap that draws seeds with replacement, then users within each drawn seed (a fresh draw for every slot);
  a replicate's Δ is the mean over its drawn seeds. Δ = the mean over seeds of each seed's full-split Δ.

Resampling users, not rows, keeps a user's impressions together: rows of one user are not independent, and gains
that come from telling users apart (the issue with length or recency signals) show up as a wide interval over users.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats
from scipy.special import expit

from ctrsink.errors import CtrSinkError
from ctrsink.metrics import EPS

LEVEL = 0.95
METRICS = ("auc", "gauc", "logloss")
T_INTERVAL = "95% t-interval over seeds"
BOOTSTRAP_INTERVAL = "95% paired percentile bootstrap over test users (seeds, then users within each seed)"
_CHUNK = 128  # bootstrap replicates per vectorised AUC block: bounds memory at about CHUNK x rows floats


def t_interval(values: Sequence[float] | np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """(mean, half-width of a `level` t-interval) over the non-NaN values; half-width NaN with fewer than two."""
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if len(v) == 0:
        return float("nan"), float("nan")
    if len(v) == 1:
        return float(v[0]), float("nan")
    half = stats.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
    return float(v.mean()), float(half)


# ------------------------------------------------------------------------------------------ paired predictions


@dataclass
class Paired:
    """Two runs' predictions on the same test rows, reduced to what resampling users needs.

    Users are indexed in sorted order of `user_id` (the columns of a multiplicity matrix)."""

    users: np.ndarray  # (U,) sorted user ids
    row_user: np.ndarray  # (n,) user index per row
    label: np.ndarray  # (n,) 0/1
    logit_a: np.ndarray
    logit_b: np.ndarray

    @classmethod
    def of(cls, pred_a: pd.DataFrame, pred_b: pd.DataFrame) -> Paired:
        """Join on sample_id; both runs must have scored exactly the same rows, with the same labels and users."""
        cols = ["sample_id", "user_id", "label", "logit"]
        for name, p in (("a", pred_a), ("b", pred_b)):
            missing = [c for c in cols if c not in p.columns]
            if missing:
                raise CtrSinkError(f"predictions {name} lack column(s) {', '.join(missing)}")
        m = pred_a[cols].merge(pred_b[cols], on="sample_id", suffixes=("_a", "_b"), validate="one_to_one")
        if len(m) != len(pred_a) or len(m) != len(pred_b):
            raise CtrSinkError(
                f"the two runs scored different test rows ({len(pred_a)} and {len(pred_b)}, {len(m)} shared); "
                "a paired interval needs the same rows (same seed and eval_samples)"
            )
        if not (m["label_a"].to_numpy() == m["label_b"].to_numpy()).all():
            raise CtrSinkError("the two runs' predictions disagree on labels: not the same test split")
        if not (m["user_id_a"].astype(str).to_numpy() == m["user_id_b"].astype(str).to_numpy()).all():
            raise CtrSinkError("the two runs' predictions disagree on user ids: not the same test split")
        users, row_user = np.unique(m["user_id_a"].astype(str).to_numpy(), return_inverse=True)
        return cls(
            users,
            row_user.astype(np.int64),
            m["label_a"].to_numpy(dtype=np.float64),
            m["logit_a"].to_numpy(dtype=np.float64),
            m["logit_b"].to_numpy(dtype=np.float64),
        )

    @property
    def n_users(self) -> int:
        return len(self.users)

    def deltas(self, metric: str, multiplicities: np.ndarray) -> np.ndarray:
        """metric(a) - metric(b) for each row of `multiplicities` (R, U): how often each user is drawn."""
        m = np.atleast_2d(np.asarray(multiplicities, dtype=np.float64))
        if m.shape[1] != self.n_users:
            raise ValueError(f"multiplicities have {m.shape[1]} columns for {self.n_users} users")
        if metric == "logloss":
            return _ratio(
                m @ (self._user_sum(_losses(self.label, self.logit_a) - _losses(self.label, self.logit_b))),
                m @ self._user_sum(np.ones_like(self.label)),
            )
        if metric == "gauc":
            n_u = self._user_sum(np.ones_like(self.label))
            auc_a, auc_b = self._user_auc(self.logit_a), self._user_auc(self.logit_b)
            ok = ~np.isnan(auc_a)  # users with both labels (the same for a and b: same labels)
            diff = np.where(ok, n_u * (auc_a - auc_b), 0.0)
            return _ratio(m @ diff, m @ np.where(ok, n_u, 0.0))
        if metric == "auc":
            return _weighted_auc(self.label, self.logit_a, self.row_user, m) - _weighted_auc(
                self.label, self.logit_b, self.row_user, m
            )
        raise ValueError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")

    def _user_sum(self, values: np.ndarray) -> np.ndarray:
        return np.bincount(self.row_user, weights=values, minlength=self.n_users)

    def _user_auc(self, scores: np.ndarray) -> np.ndarray:
        """Each user's Mann-Whitney AUC (ties count one half); NaN for a user with one class."""
        df = pd.DataFrame({"u": self.row_user, "y": self.label, "s": scores})
        ranks = df.groupby("u")["s"].rank(method="average").to_numpy()
        pos = self._user_sum(self.label)
        n = self._user_sum(np.ones_like(self.label))
        rank_pos = self._user_sum(ranks * self.label)
        neg = n - pos
        with np.errstate(invalid="ignore", divide="ignore"):
            auc = (rank_pos - pos * (pos + 1) / 2) / (pos * neg)
        return np.where((pos > 0) & (neg > 0), auc, np.nan)


def _losses(label: np.ndarray, logit: np.ndarray) -> np.ndarray:
    """Per-row log loss with the probability clipping of `ctrsink.metrics.logloss`."""
    p = np.clip(expit(logit), EPS, 1 - EPS)
    return -(label * np.log(p) + (1 - label) * np.log(1 - p))


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _weighted_auc(label: np.ndarray, scores: np.ndarray, row_user: np.ndarray, m: np.ndarray) -> np.ndarray:
    """AUC with row weights m[r, user(row)] for every replicate r (sklearn's roc_auc_score with sample_weight).

    Rows are sorted once; per replicate, weights are summed per tie group of scores, and each positive group
    counts the negative weight strictly below it plus half of its own group's (ties), all as array operations."""
    order = np.argsort(scores, kind="stable")
    s, y, u = scores[order], label[order], row_user[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    out = np.empty(len(m))
    for lo in range(0, len(m), _CHUNK):
        w = m[lo : lo + _CHUNK][:, u]  # (c, n) row weights
        pos = np.add.reduceat(w * y, starts, axis=1)
        neg = np.add.reduceat(w * (1 - y), starts, axis=1)
        below = np.cumsum(neg, axis=1) - neg
        num = (pos * (below + 0.5 * neg)).sum(1)
        out[lo : lo + _CHUNK] = _ratio(num, pos.sum(1) * neg.sum(1))
    return out


# ------------------------------------------------------------------------------------------------ bootstraps


def user_multiplicities(n_users: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n_users): how often each user is drawn when n_users users are drawn with replacement."""
    return rng.multinomial(n_users, np.full(n_users, 1.0 / n_users), size=n_boot)


def _percentiles(boot: np.ndarray, level: float) -> tuple[float, float]:
    boot = boot[~np.isnan(boot)]
    if len(boot) == 0:
        return float("nan"), float("nan")
    lo, hi = np.percentile(boot, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def paired_user_bootstrap(
    pred_a: pd.DataFrame,
    pred_b: pd.DataFrame,
    metric: str,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = LEVEL,
) -> tuple[float, float, float]:
    """(Δ, lo, hi): Δ = metric(a) - metric(b) on all rows, [lo, hi] its paired percentile bootstrap interval over
    users. `pred_*`: one row per test sample with sample_id, user_id, label, logit. Deterministic given `seed`."""
    return seed_user_bootstrap([(pred_a, pred_b)], metric, n_boot, seed, level)


def seed_user_bootstrap(
    pairs: Sequence[tuple[pd.DataFrame, pd.DataFrame]],
    metric: str,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = LEVEL,
) -> tuple[float, float, float]:
    """(Δ, lo, hi) over seeds: `pairs` holds one (variant, baseline) pair of predictions per seed. Seeds are drawn
    with replacement, then users within each drawn seed; one pair gives the plain paired user bootstrap."""
    if not pairs:
        return float("nan"), float("nan"), float("nan")
    paired = [Paired.of(a, b) for a, b in pairs]
    point = float(np.mean([p.deltas(metric, np.ones((1, p.n_users)))[0] for p in paired]))
    rng = np.random.default_rng(seed)
    n_seeds = len(paired)
    # one seed: every slot is that seed, and no draw is spent on choosing it
    picks = rng.integers(0, n_seeds, size=(n_boot, n_seeds)) if n_seeds > 1 else np.zeros((n_boot, 1), int)
    slots = np.empty(picks.shape)
    for s, p in enumerate(paired):
        chosen = picks == s
        if chosen.any():
            slots[chosen] = p.deltas(metric, user_multiplicities(p.n_users, int(chosen.sum()), rng))
    lo, hi = _percentiles(slots.mean(1), level)
    return point, lo, hi

"""CTR metrics: AUC, LogLoss, gAUC (impression-weighted over users with both labels), calibration."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

EPS = 1e-7


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    labels = np.asarray(labels)
    if labels.size == 0 or labels.min() == labels.max():
        return float("nan")  # undefined with one class
    return float(roc_auc_score(labels, scores))


def logloss(labels: np.ndarray, probs: np.ndarray) -> float:
    p = np.clip(np.asarray(probs, dtype=np.float64), EPS, 1 - EPS)
    y = np.asarray(labels, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))) if y.size else float("nan")


def gauc(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> float:
    """sum_u n_u AUC_u / sum_u n_u over users u with both labels; n_u = the user's impressions (group key: user)."""
    # labels as float64: integer arithmetic on small dtypes (int8 from Parquet) overflows in the rank formula
    df = pd.DataFrame(
        {"y": np.asarray(labels, dtype=np.float64), "s": np.asarray(scores), "g": np.asarray(groups)}
    )
    # ranks within a group give each group's Mann-Whitney AUC without a Python loop per user
    df["r"] = df.groupby("g")["s"].rank(method="average")
    agg = df.groupby("g").agg(n=("y", "size"), pos=("y", "sum"))
    agg["rank_pos"] = df[df["y"] == 1].groupby("g")["r"].sum()
    agg = agg[(agg["pos"] > 0) & (agg["pos"] < agg["n"])]
    if agg.empty:
        return float("nan")
    neg = agg["n"] - agg["pos"]
    user_auc = (agg["rank_pos"] - agg["pos"] * (agg["pos"] + 1) / 2) / (agg["pos"] * neg)
    return float((user_auc * agg["n"]).sum() / agg["n"].sum())


def ctr_metrics(labels: np.ndarray, logits: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    probs = 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))
    labels = np.asarray(labels)
    base = float(labels.mean()) if labels.size else float("nan")
    return {
        "auc": auc(labels, probs),
        "logloss": logloss(labels, probs),
        "gauc": gauc(labels, probs, groups),
        "calibration": float(probs.mean() / base) if base > 0 else float("nan"),  # mean(p) / mean(y)
        "n": int(labels.size),
        "positive_rate": base,
    }


def user_decomposition(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    """Where an AUC comes from: ranking users (between) or ranking each user's items (within, = gAUC).

    `between_auc` scores every row by its user's mean score: the AUC a model gets from telling users' base rates
    apart alone. `user_rate_corr` is the Pearson correlation over users of that mean with the user's observed
    positive rate; `oracle_between_auc` scores rows by the observed rate itself, the ceiling of `between_auc`.
    A gain in AUC without a gain in gAUC is a gain between users."""
    df = pd.DataFrame(
        {
            "y": np.asarray(labels, dtype=np.float64),
            "s": np.asarray(scores, np.float64),
            "g": np.asarray(groups),
        }
    )
    user_mean = df.groupby("g")["s"].transform("mean")
    user_rate = df.groupby("g")["y"].transform("mean")
    per_user = df.groupby("g").agg(s=("s", "mean"), y=("y", "mean"))
    corr = per_user["s"].corr(per_user["y"]) if len(per_user) > 2 else float("nan")
    return {
        "between_auc": auc(df["y"].to_numpy(), user_mean.to_numpy()),
        "within_gauc": gauc(df["y"].to_numpy(), df["s"].to_numpy(), df["g"].to_numpy()),
        "user_rate_corr": float(corr),
        "oracle_between_auc": auc(df["y"].to_numpy(), user_rate.to_numpy()),
    }

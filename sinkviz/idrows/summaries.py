"""Summaries of a loaded ID-row analysis for the dashboard: per module, per branch, per time-gap bucket."""

from __future__ import annotations

import numpy as np
import pandas as pd

from sinkviz.idrows.folder import IDAnalysis
from sinkviz.idrows.points import MODULE_ORDER, series_label


def _order(frame: pd.DataFrame) -> pd.DataFrame:
    rank = {m: i for i, m in enumerate(MODULE_ORDER)}
    key = frame["module"].map(lambda m: rank.get(m, len(rank)))
    return frame.assign(_o=key).sort_values(["_o", "layer"]).drop(columns="_o").reset_index(drop=True)


def with_series(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with a `series` column ('cross L0', 'din') in display order."""
    out = _order(frame)
    return out.assign(series=[series_label(m, int(x)) for m, x in zip(out["module"], out["layer"])])


def gap_profile(analysis: IDAnalysis, candidate: str = "true") -> pd.DataFrame:
    """Mean candidate mass per log time-gap bucket against the uniform expectation (`ratio` = mass / uniform)."""
    t = analysis.gap_mass[analysis.gap_mass["candidate"] == candidate]
    with np.errstate(invalid="ignore", divide="ignore"):
        t = t.assign(ratio=t["mass"] / t["uniform"])
    return with_series(t).sort_values(["series", "bucket"], kind="stable").reset_index(drop=True)


def branch_shares(gates: pd.DataFrame, value: str = "share", candidate: str = "true") -> pd.DataFrame:
    """Mean gate (`value` = gate or share) per layer and branch: overall ("all") and by whether the candidate's
    category is new to the history or recurring."""
    t = gates[gates["candidate"] == candidate]
    parts = [t.assign(cat_status="all"), t]
    both = pd.concat(parts, ignore_index=True)
    out = both.groupby(["layer", "branch", "cat_status"], as_index=False).agg(
        value=(value, "mean"), rows=(value, "size")
    )
    return out.rename(columns={"value": value})


def conditioning_summary(conditioning: pd.DataFrame) -> pd.DataFrame:
    """JS divergence between the two candidates per module: mean, median, rows."""
    if conditioning.empty:
        return pd.DataFrame(columns=["module", "layer", "series", "js_mean", "js_median", "rows"])
    out = conditioning.groupby(["module", "layer"], as_index=False).agg(
        js_mean=("js", "mean"), js_median=("js", "median"), rows=("js", "size")
    )
    return with_series(out)


def distribution_summary(distributions: pd.DataFrame, candidate: str = "true") -> pd.DataFrame:
    """Per module: mean entropy, normalised entropy, keys for 90%, boundary mass vs its expectation, top-3 overlap
    with the candidate's category vs the category's share of the history."""
    t = distributions[distributions["candidate"] == candidate]
    cols = [
        "entropy",
        "entropy_norm",
        "keys90",
        "n_keys",
        "boundary_mass",
        "boundary_expected",
        "top3_same_cat",
        "same_cat_share",
        "outside_mass",
        "negative_mass",
    ]
    if t.empty:
        return pd.DataFrame(columns=["module", "layer", "series", *cols, "rows"])
    out = t.groupby(["module", "layer"], as_index=False)[cols].mean()
    out["rows"] = t.groupby(["module", "layer"]).size().to_numpy()
    return with_series(out)

"""The reference's sample files, rebuilt from ml-latest-small by its recipe (../shared/reference/reference-baseline.md),
are the rows `prepare --split-rule timestamp` + `subsample_rule=reference` give: the same users, items, times,
labels and histories, so a run here and a reference run score the same samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ctrsink.config import Config
from ctrsink.data import prepare
from ctrsink.sampling import load_samples

SIZES = {"train": (8000, 6000), "valid": (2000, 2000), "test": (2000, 2000)}


def reference_recipe(folder: Path) -> dict[str, pd.DataFrame]:
    """Steps 1-7 of the recipe, written from its text: user, movie, timestamp, label, last-20 histories."""
    r = pd.read_csv(folder / "ratings.csv").sort_values(["userId", "timestamp", "movieId"], kind="stable")
    r["label"] = (r["rating"] >= 4.0).astype(int)
    rows = []
    for _, g in r.groupby("userId", sort=False):
        ts, movies, labels = g["timestamp"].to_numpy(), g["movieId"].to_numpy(), g["label"].to_numpy()
        for i in range(len(g)):
            earlier = ts < ts[i]
            pos = movies[earlier & (labels == 1)][-20:]
            neg = movies[earlier & (labels == 0)][-20:]
            if len(pos) or len(neg):
                rows.append((g["userId"].iat[i], movies[i], ts[i], labels[i], tuple(pos), tuple(neg)))
    s = pd.DataFrame(rows, columns=["user", "movie", "timestamp", "label", "pos", "neg"])
    t = np.sort(s["timestamp"].to_numpy())
    q_valid, q_test = t[int(np.floor(0.8 * len(s)))], t[int(np.floor(0.9 * len(s)))]
    parts = {
        "train": s[s["timestamp"] < q_valid],
        "valid": s[(s["timestamp"] >= q_valid) & (s["timestamp"] < q_test)],
        "test": s[s["timestamp"] >= q_test],
    }
    out = {}
    for split, frame in parts.items():
        frame = frame.sort_values(["timestamp", "user", "movie"], kind="stable").reset_index(drop=True)
        drawn, kept = SIZES[split]
        keep = np.sort(np.random.RandomState(0).permutation(len(frame))[:drawn])[:kept]
        out[split] = frame.iloc[keep].reset_index(drop=True)
    return out


@pytest.fixture(scope="module")
def movielens(shared_data: Path) -> Path:
    folder = shared_data / "movielens" / "ml-latest-small"
    if not (folder / "ratings.csv").is_file():
        pytest.skip(f"{folder} has no ratings.csv")
    return folder


def test_reference_rows_are_ours(movielens: Path, tmp_path: Path) -> None:
    data = tmp_path / "mls"
    manifest = prepare("movielens", movielens, data, max_history=20, split_rule="timestamp")
    assert manifest["sizes"] == {"train": 78944, "valid": 9868, "test": 9869}  # the recipe's counts
    cfg = Config(train_samples=6000, eval_samples=2000, subsample_rule="reference", train_subsample_pool=8000)
    ours = load_samples(data, cfg)
    movie_ids = ours.items["item_id"].astype(int).to_numpy()
    theirs = reference_recipe(movielens)
    for split, frame in theirs.items():
        mine = ours.frames[split]
        assert len(mine) == len(frame)
        assert (mine["user_id"].astype(int).to_numpy() == frame["user"].to_numpy()).all(), split
        assert (movie_ids[mine["item_idx"].to_numpy()] == frame["movie"].to_numpy()).all(), split
        assert (mine["timestamp"].to_numpy() == frame["timestamp"].to_numpy()).all(), split
        assert (mine["label"].to_numpy() == frame["label"].to_numpy()).all(), split
        for field in ("pos", "neg"):
            histories = [tuple(movie_ids[np.asarray(h, dtype=int)]) for h in mine[f"{field}_item_idx"]]
            assert histories == list(frame[field]), (split, field)
    # the reference's training rows come from the early part of the split; the seed does not move them
    other = load_samples(data, Config(**{**cfg.to_dict(), "seed": 7}))
    assert other.frames["train"]["sample_id"].equals(ours.frames["train"]["sample_id"])

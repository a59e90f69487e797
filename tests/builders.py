"""Shared builders for tests that need tiny item tables and sample rows in the toolkit's sample schema."""

from __future__ import annotations

import numpy as np
import pandas as pd

# ASCII titles (uncased WordPiece strips accents), all distinct so a decoded span names its item
TITLES = [
    "Toy Story (1995)",
    "Jumanji (1995)",
    "Heat (1995)",
    "Usual Suspects, The (1995)",
    "Casino (1995)",
    "Sabrina (1995)",
    "GoldenEye (1995)",
    "Balto (1995)",
    "Nixon (1995)",
    "Othello (1995)",
    "Seven (1995)",
    "Babe (1995)",
]
CATS = [
    "Animation|Comedy",
    "Adventure|Fantasy",
    "Crime|Thriller",
    "Crime|Mystery",
    "Drama",
    "Romance",
    "Action",
    "Animation",
    "Drama",
    "Drama",
    "Thriller",
    "Comedy",
]
T0 = 1_000_000_000
DAY = 86400
HISTORY = ["pos", "neg"]


def make_items(titles: list[str] = TITLES, cats: list[str] = CATS) -> pd.DataFrame:
    n = len(titles)
    return pd.DataFrame(
        {
            "item_idx": np.arange(n),
            "item_id": [f"m{i}" for i in range(n)],
            "title": titles,
            "categories": cats[:n],
            "text": [f"{t} {c}" for t, c in zip(titles, cats)],
        }
    )


def make_row(
    sample_id: int, pos: list[int], neg: list[int], target: int = 0, label: int = 1, gap_days: int = 1
) -> dict:
    """A sample in the toolkit schema; histories chronological, behavior i of n at T0 - (n - i) * gap_days days."""
    row = {
        "sample_id": sample_id,
        "user_id": f"u{sample_id}",
        "item_idx": target,
        "timestamp": T0,
        "label": label,
        "feedback": float(label),
    }
    for name, hist, lab in (("pos", pos, 1), ("neg", neg, 0)):
        n = len(hist)
        row[f"{name}_item_idx"] = list(hist)
        row[f"{name}_timestamp"] = [T0 - (n - i) * gap_days * DAY for i in range(n)]
        row[f"{name}_label"] = [lab] * n
    return row

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


# A tiny world for sinkviz tests: short titles, three rows with padding in every field, a one-behavior history
# (no sink) and an empty one.
SHORT_TITLES = [
    "Toy Story",
    "Jumanji",
    "Heat",
    "Casino",
    "Sabrina",
    "GoldenEye",
    "Balto",
    "Nixon",
    "Seven",
    "Babe",
]
SHORT_CATS = ["Animation|Comedy", "Adventure", "Crime|Thriller", "Drama", "Romance"] * 2


def short_items() -> pd.DataFrame:
    return make_items(SHORT_TITLES, SHORT_CATS)


TINY_ROWS = [
    make_row(0, [3, 0, 7, 9, 5], [2, 4, 8], 1, 1),
    make_row(1, [1, 2], [], 6, 0),
    make_row(2, [8, 9, 0, 1], [3], 4, 1),
]


def build_tiny(backbone: str = "scratch:bert-tiny", **overrides):
    """(model in eval mode, batcher) of a seeded 2-layer, 32-wide scratch backbone with sinks over `short_items()`."""
    import torch

    from ctrsink.backbones import load_backbone
    from ctrsink.config import PROMPT_PRESETS, Config
    from ctrsink.run import assemble

    values = dict(
        backbone=backbone,
        scratch_hidden=32,
        scratch_layers=2,
        scratch_heads=4,
        scratch_kv_heads=2,
        scratch_vocab_size=300,
        seed=0,
        use_sink=True,
    )
    values.update(overrides)
    cfg = Config(**values).validate()
    texts = SHORT_TITLES + SHORT_CATS + list(PROMPT_PRESETS["en"].values()) + [";"]
    bb, tok, _ = load_backbone(cfg, texts)
    model, batcher, _ = assemble(cfg, bb, tok, short_items(), HISTORY)
    torch.manual_seed(1)
    return model.eval(), batcher

"""What a text model needs from the data before it is built: its scratch tokenizer's corpus and frozen item vectors."""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np
import pandas as pd

from ctrsink.config import PROMPT_PRESETS, Config
from ctrsink.text import FEEDBACK_TEXT, item_texts, signal_text_vocabulary


def tokenizer_corpus(
    items: pd.DataFrame, train: pd.DataFrame, history_fields: list[str], cfg: Config
) -> list[str]:
    """Text a scratch tokenizer learns from: the rendered texts of items seen in the training split, the prompts,
    separator and feedback words, and printable ASCII so punctuation never becomes [UNK]."""
    seen = [train["item_idx"].to_numpy()]
    for f in history_fields:
        col = train[f"{f}_item_idx"]
        if len(col):
            seen.append(np.concatenate([np.asarray(v) for v in col]))
    idx = np.unique(np.concatenate(seen).astype(np.int64))
    titles, cats, behaviors = item_texts(items.iloc[idx], cfg)
    texts = titles + cats + (behaviors if behaviors is not titles else [])
    texts += list({**PROMPT_PRESETS[cfg.prompt_preset], **cfg.prompts}.values())
    texts += [cfg.separator, *FEEDBACK_TEXT.values(), " ".join(string.printable.strip())]
    texts += signal_text_vocabulary(cfg)  # the phrases of behavior_signal_text (none when it is off)
    return texts


def item_vectors_for(cfg: Config, items: pd.DataFrame, cached: Path | None = None) -> np.ndarray | None:
    """Frozen text embeddings of every item when the config selects or signals by similarity, else None.

    Computed once per run (not per batch: spec weakness #9); `cached` is read instead when it exists.
    """
    if cfg.behavior_selection != "similarity" and cfg.sink_signal != "similarity":
        return None
    from ctrsink.retrieval import item_vectors

    if cached is not None and cached.is_file():
        return np.load(cached, allow_pickle=False)
    return item_vectors(items["title"].astype(str).tolist())

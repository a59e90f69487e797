"""Registering the sink token so it is always exactly one token, for every tokenizer family (spec §3, weakness #3)."""

from __future__ import annotations

from typing import Any

from ctrsink.errors import CtrSinkError

BERT_SINK = "[unused1]"  # in every standard BERT WordPiece vocabulary: no embedding resize needed
NEW_SINK = "<|sink|>"


def choose_sink_token(tokenizer: Any, requested: str, use_cls_token: bool) -> str:
    """The sink string: the CLS token for the `[CLS]`-sink ablation, else the configured (or automatic) string."""
    if use_cls_token:
        if tokenizer.cls_token is None:
            raise CtrSinkError(
                "config option 'use_cls_token': this tokenizer has no CLS token (decoder backbone)"
            )
        return tokenizer.cls_token
    if requested != "auto":
        return requested
    for candidate in ("[SINK]", NEW_SINK):  # scratch tokenizers carry one of these already
        if candidate in tokenizer.get_vocab():
            return candidate
    return BERT_SINK if BERT_SINK in tokenizer.get_vocab() else NEW_SINK


def register_sink_token(tokenizer: Any, sink: str) -> tuple[int, bool]:
    """Add `sink` as a special token (a no-op when it already is one). Returns (id, whether the vocabulary grew);
    `fit_embedding_rows` then sizes the model's embeddings."""
    before = len(tokenizer)
    if sink not in (tokenizer.all_special_tokens or []) and sink != tokenizer.cls_token:
        tokenizer.add_tokens([sink], special_tokens=True)
    ids = tokenizer(sink, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise CtrSinkError(
            f"config option 'sink_token': {sink!r} does not tokenize to one token ({len(ids)} tokens)"
        )
    return ids[0], len(tokenizer) > before


def fit_embedding_rows(model: Any, tokenizer: Any) -> bool:
    """Grow `model`'s input embeddings to hold every tokenizer id, never shrink them: checkpoints such as Qwen's
    pad their matrix past the vocabulary, and a new sink token then takes a spare row (resizing to len(tokenizer)
    would cut the matrix instead)."""
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) <= rows:
        return False
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    return True

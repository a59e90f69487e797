"""Render a sample to text fields, token by token, with every token's role and every behavior's span.

A sample becomes one sequence per field: the history fields (``pos``/``neg`` or ``all``) and the target's ``title``
and ``categories``. Pieces (prompt, each behavior, separator, sink) are tokenized separately and concatenated, so
roles, behavior spans and sink positions are known by construction instead of searched for in the ids (spec §3).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ctrsink.config import PROMPT_PRESETS, Config

# token roles; the order is a public contract (sinkviz reads it), append only
ROLES = ("padding", "special", "prompt", "behavior", "separator", "target", "sink")
ROLE_ID = {name: i for i, name in enumerate(ROLES)}
ITEM_FIELDS = ("title", "categories")


@dataclass
class FieldEncoding:
    input_ids: list[int] = field(default_factory=list)
    token_roles: list[int] = field(default_factory=list)
    behavior_index: list[int] = field(default_factory=list)  # per token: which kept behavior (-1 = none)
    behavior_spans: list[tuple[int, int]] = field(default_factory=list)  # [start, end) per kept behavior
    sink_positions: list[int] = field(default_factory=list)
    sink_behavior: list[int] = field(default_factory=list)  # the kept behavior each sink follows
    kept: list[int] = field(default_factory=list)  # index into the stored history list, per kept behavior
    truncated: int = 0  # behaviors dropped to fit max_user_tokens

    def add(self, ids: list[int], role: str, behavior: int = -1) -> None:
        self.input_ids.extend(ids)
        self.token_roles.extend([ROLE_ID[role]] * len(ids))
        self.behavior_index.extend([behavior] * len(ids))


FEEDBACK_TEXT = {1: " (liked)", 0: " (disliked)"}


def item_texts(items: Any, cfg: Config) -> tuple[list[str], list[str], list[str]]:
    """(titles, category texts, behavior texts) exactly as rendered; scratch tokenizers learn from these too."""
    titles = items["title"].astype(str).tolist()
    cats = items["categories"].fillna("").astype(str).str.replace("|", ", ", regex=False).tolist()
    if cfg.behavior_text == "title_categories":
        return titles, cats, [f"{t} ({c})" if c else t for t, c in zip(titles, cats)]
    return titles, cats, titles


class TextRenderer:
    """Turns sample rows into per-field token sequences. One instance per (tokenizer, items table, config)."""

    def __init__(
        self,
        tokenizer: Any,
        items: Any,
        cfg: Config,
        history_fields: list[str],
        sink_token: str | None = None,
    ) -> None:
        self.tok = tokenizer
        self.cfg = cfg
        self.history_fields = list(history_fields)
        self.fields = self.history_fields + list(ITEM_FIELDS)
        prompts = {**PROMPT_PRESETS[cfg.prompt_preset], **cfg.prompts}
        self.prompt_ids = {f: self._ids(prompts[f]) for f in self.fields}
        self.sep_ids = self._ids(cfg.separator)
        self.sink_id = tokenizer.convert_tokens_to_ids(sink_token) if sink_token else None
        # encoders open with [CLS] and close with [SEP]; decoders have neither (pooling is a mean, not a CLS read)
        self.open_ids = [tokenizer.cls_token_id] if tokenizer.cls_token_id is not None else []
        self.close_ids = [tokenizer.sep_token_id] if tokenizer.sep_token_id is not None else []
        titles, cats, behavior_texts = item_texts(items, cfg)
        cap = cfg.max_item_tokens
        self.title_ids = [self._ids(t)[:cap] for t in titles]
        self.category_ids = [self._ids(c)[:cap] for c in cats]
        self.behavior_ids = [self._ids(t)[:cap] for t in behavior_texts]
        self.feedback_ids = {k: self._ids(v) for k, v in FEEDBACK_TEXT.items()}

    def _ids(self, text: str) -> list[int]:
        if not text:
            return []
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    # ------------------------------------------------------------------------------------------ one sample
    def encode_history(
        self,
        name: str,
        item_idx: np.ndarray,
        labels: np.ndarray | None,
        order: np.ndarray | None = None,
        keep: str = "last",
    ) -> FieldEncoding:
        """Encode one history field. `order` lists stored-history indices to keep, in display order.

        Over budget, whole behaviors are dropped from the end opposite `keep`: 'last' keeps the newest of a
        chronological order, 'first' keeps the most similar of a similarity order (most similar first).
        """
        n = len(item_idx)
        if order is None:  # most recent num_behaviors, chronological
            order = np.arange(max(0, n - self.cfg.num_behaviors), n)
        budget = (
            self.cfg.max_user_tokens - len(self.open_ids) - len(self.close_ids) - len(self.prompt_ids[name])
        )
        per_join = len(self.sep_ids) + (1 if self.sink_id is not None else 0)
        # drop behaviors (oldest, or least similar) until the field fits its token budget
        blocks, used = [], 0
        walk = list(reversed(order.tolist())) if keep == "last" else order.tolist()
        for j in walk:
            ids = self.behavior_ids[int(item_idx[j])]
            if labels is not None:
                ids = ids + self.feedback_ids[int(labels[j])]
            cost = len(ids) + (per_join if blocks else 0)
            if used + cost > budget:
                break
            blocks.append((j, ids))
            used += cost
        if keep == "last":
            blocks.reverse()
        enc = FieldEncoding(truncated=len(order) - len(blocks))
        enc.add(self.open_ids, "special")
        enc.add(self.prompt_ids[name], "prompt")
        for k, (j, ids) in enumerate(blocks):
            start = len(enc.input_ids)
            enc.add(ids, "behavior", k)
            enc.behavior_spans.append((start, len(enc.input_ids)))
            enc.kept.append(j)
            if k < len(blocks) - 1:  # one sink after each behavior but the last (N behaviors, N-1 sinks)
                if self.sink_id is not None:
                    enc.sink_positions.append(len(enc.input_ids))
                    enc.sink_behavior.append(k)
                    enc.add([self.sink_id], "sink", k)
                enc.add(self.sep_ids, "separator")
        enc.add(self.close_ids, "special")
        return enc

    def encode_item(self, name: str, item_idx: int) -> FieldEncoding:
        enc = FieldEncoding()
        enc.add(self.open_ids, "special")
        enc.add(self.prompt_ids[name], "prompt")
        enc.add(self.title_ids[item_idx] if name == "title" else self.category_ids[item_idx], "target")
        enc.add(self.close_ids, "special")
        return enc

    def encode(self, row: dict[str, Any]) -> dict[str, FieldEncoding]:
        out = {}
        single = self.history_fields == ["all"]
        for f in self.history_fields:
            labels = np.asarray(row[f"{f}_label"]) if single else None
            out[f] = self.encode_history(
                f,
                np.asarray(row[f"{f}_item_idx"]),
                labels,
                row.get(f"{f}_order"),
                row.get(f"{f}_keep", "last"),
            )
        for f in ITEM_FIELDS:
            out[f] = self.encode_item(f, int(row["item_idx"]))
        return out

    def tokens(self, ids: list[int]) -> list[str]:
        return self.tok.convert_ids_to_tokens(ids)


def pad_field(
    encodings: list[FieldEncoding], pad_id: int, extra: dict[str, list[list[int]]] | None = None
) -> dict[str, torch.Tensor]:
    """Right-pad one field over a batch to its longest row (not to a fixed 512: spec weakness #11)."""
    width = max(len(e.input_ids) for e in encodings)
    b = len(encodings)
    ids = torch.full((b, width), pad_id, dtype=torch.long)
    mask = torch.zeros((b, width), dtype=torch.long)
    roles = torch.zeros((b, width), dtype=torch.long)  # 0 = padding
    beh = torch.full((b, width), -1, dtype=torch.long)
    for i, e in enumerate(encodings):
        t = len(e.input_ids)
        ids[i, :t] = torch.tensor(e.input_ids)
        mask[i, :t] = 1
        roles[i, :t] = torch.tensor(e.token_roles)
        beh[i, :t] = torch.tensor(e.behavior_index)
    out = {"input_ids": ids, "attention_mask": mask, "token_roles": roles, "behavior_index": beh}
    for key, rows in (extra or {}).items():
        t = torch.full((b, width), -1, dtype=torch.long)
        for i, r in enumerate(rows):
            t[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        out[key] = t
    return out

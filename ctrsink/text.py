"""Render a sample to text fields, token by token, with every token's role and every behavior's span.

A sample becomes one sequence per field: the history fields (``pos``/``neg`` or ``all``) and the target's ``title``
and ``categories``. Pieces (prompt, each behavior, separator, sink) are tokenized separately and concatenated, so
roles, behavior spans and sink positions are known by construction instead of searched for in the ids (spec §3).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ctrsink.config import PROMPT_PRESETS, Config
from ctrsink.errors import CtrSinkError
from ctrsink.sinks.signals import sink_signal_ids, time_gap_bucket_start

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
    # first token of the separator after kept behavior k (where its signal goes when signal_carrier=separator)
    separator_positions: list[int] = field(default_factory=list)
    separator_behavior: list[int] = field(default_factory=list)  # the kept behavior each separator follows
    kept: list[int] = field(default_factory=list)  # index into the stored history list, per kept behavior
    truncated: int = 0  # behaviors dropped to fit max_user_tokens

    def add(self, ids: list[int], role: str, behavior: int = -1) -> None:
        self.input_ids.extend(ids)
        self.token_roles.extend([ROLE_ID[role]] * len(ids))
        self.behavior_index.extend([behavior] * len(ids))


FEEDBACK_TEXT = {1: " (liked)", 0: " (disliked)"}
# a behavior's signal as words (behavior_signal_text): time gaps in the largest unit that keeps the number >= 1
DURATION_UNITS = (  # (name, seconds, used below this many seconds)
    ("minute", 60.0, 3600.0),
    ("hour", 3600.0, 86400.0),
    ("day", 86400.0, 14 * 86400.0),
    ("week", 7 * 86400.0, 61 * 86400.0),
    ("month", 30.44 * 86400.0, 365 * 86400.0),
    ("year", 365 * 86400.0, float("inf")),
)


def duration_text(seconds: float) -> str:
    """'5.8 minutes', '3.3 days', '12 days', '1 year': one decimal below 10, so neighbouring time-gap buckets
    (about 10% apart) mostly read differently."""
    name, unit, _ = next(u for u in DURATION_UNITS if seconds < u[2])
    v = seconds / unit
    num = f"{v:.1f}" if v < 9.95 else f"{v:.0f}"
    num = num[:-2] if num.endswith(".0") else num
    return f"{num} {name}{'' if num == '1' else 's'}"


def signal_phrase(kind: str, signal_id: int, cfg: Config) -> str:
    """The text written after a behavior for `behavior_signal_text`: a function of the signal id alone, so the text
    carries what the sink's signal embedding carries (the time-gap bucket's lower edge, or the index)."""
    if kind == "index":
        return f" (position {signal_id} from {cfg.index_origin})"
    n, tau, horizon = cfg.sink_num_embeddings, cfg.time_gap_tau_hours, cfg.time_gap_horizon_days
    if signal_id <= 0:
        amount = "under " + duration_text(time_gap_bucket_start(1, n, tau, horizon))
    elif signal_id >= n - 1:
        amount = duration_text(horizon * 86400.0) + " or more"
    else:
        amount = duration_text(time_gap_bucket_start(signal_id, n, tau, horizon))
    return f" ({amount} before{' the next' if cfg.time_gap_ref == 'previous' else ''})"


def signal_text_vocabulary(cfg: Config) -> list[str]:
    """Every phrase `behavior_signal_text` can write, for a scratch tokenizer's corpus (empty when off)."""
    kind = cfg.behavior_signal_text
    return [] if kind == "off" else [signal_phrase(kind, i, cfg) for i in range(cfg.sink_num_embeddings)]


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
        if cfg.signal_carrier == "separator" and not self.sep_ids:
            raise CtrSinkError(
                f"config option 'signal_carrier': separator {cfg.separator!r} is no token for this tokenizer"
            )
        self._phrase_ids: dict[int, list[int]] = {}
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
        note: Callable[[int, int], list[int]] | None = None,
    ) -> FieldEncoding:
        """Encode one history field. `order` lists stored-history indices to keep, in display order.

        Over budget, whole behaviors are dropped from the end opposite `keep`: 'last' keeps the newest of a
        chronological order, 'first' keeps the most similar of a similarity order (most similar first). With
        `history_truncation=cut_right` a chronological field is cut like one string on the right instead: the
        oldest behaviors stay and the last one that does not fit keeps its first tokens (the reference's way).
        `note(j, next_j)` gives the ids written after every behavior but the last (`behavior_signal_text`), inside
        the behavior's span and counted in the budget; next_j is the next kept behavior in display order.
        """
        n = len(item_idx)
        if order is None:  # most recent num_behaviors, chronological
            order = np.arange(max(0, n - self.cfg.num_behaviors), n)
        budget = (
            self.cfg.max_user_tokens - len(self.open_ids) - len(self.close_ids) - len(self.prompt_ids[name])
        )
        per_join = len(self.sep_ids) + (1 if self.sink_id is not None else 0)
        cut_right = self.cfg.history_truncation == "cut_right" and keep == "last"
        if cut_right:
            keep = "first"
        # drop behaviors (oldest, or least similar) until the field fits its token budget
        blocks: list[list] = []  # [stored index, behavior ids, note ids] in walk order
        used = 0
        walk = list(reversed(order.tolist())) if keep == "last" else order.tolist()
        for j in walk:
            ids = self.behavior_ids[int(item_idx[j])]
            if labels is not None:
                ids = ids + self.feedback_ids[int(labels[j])]
            joined: list[int] = []  # the note of the earlier behavior of the join this block adds
            if blocks and note is not None:
                joined = note(j, blocks[-1][0]) if keep == "last" else note(blocks[-1][0], j)
            cost = len(ids) + (per_join + len(joined) if blocks else 0)
            if used + cost > budget:
                room = (
                    budget - used - (cost - len(ids))
                )  # what the join leaves for this behavior's first tokens
                if cut_right and room > 0:
                    if blocks:
                        blocks[-1][2] = joined
                    blocks.append([j, ids[:room], []])
                break
            if keep == "last":  # walking backwards: this block is the earlier one
                blocks.append([j, ids, joined])
            else:
                if blocks:
                    blocks[-1][2] = joined
                blocks.append([j, ids, []])
            used += cost
        if keep == "last":
            blocks.reverse()
        enc = FieldEncoding(truncated=len(order) - len(blocks))
        enc.add(self.open_ids, "special")
        enc.add(self.prompt_ids[name], "prompt")
        for k, (j, ids, joined) in enumerate(blocks):
            start = len(enc.input_ids)
            enc.add(ids, "behavior", k)
            enc.kept.append(j)
            if k == len(blocks) - 1:
                enc.behavior_spans.append((start, len(enc.input_ids)))
                continue
            enc.add(joined, "behavior", k)
            enc.behavior_spans.append((start, len(enc.input_ids)))
            # one sink after each behavior but the last (N behaviors, N-1 sinks), then the separator
            if self.sink_id is not None:
                enc.sink_positions.append(len(enc.input_ids))
                enc.sink_behavior.append(k)
                enc.add([self.sink_id], "sink", k)
            enc.separator_positions.append(len(enc.input_ids))  # the sink's row moved onto the separator
            enc.separator_behavior.append(k)
            enc.add(self.sep_ids, "separator")
        enc.add(self.close_ids, "special")
        return enc

    def signal_note(self, name: str, row: dict[str, Any]) -> Callable[[int, int], list[int]] | None:
        """`note` for encode_history: the behavior's signal id, computed as the sink signal is, written as words."""
        kind, cfg = self.cfg.behavior_signal_text, self.cfg
        if kind == "off":
            return None
        timestamps = np.asarray(row.get(f"{name}_timestamp", []))
        stored_len = len(row[f"{name}_item_idx"])

        def note(j: int, next_j: int) -> list[int]:
            (sid,) = sink_signal_ids(
                kind,
                n=cfg.sink_num_embeddings,
                kept=[j, next_j],
                sink_behavior=[0],
                stored_len=stored_len,
                timestamps=timestamps,
                target_ts=int(row["timestamp"]),
                sims=None,
                seed=cfg.seed,
                sample_id=int(row["sample_id"]),
                index_origin=cfg.index_origin,
                time_gap_ref=cfg.time_gap_ref,
                tau_hours=cfg.time_gap_tau_hours,
                horizon_days=cfg.time_gap_horizon_days,
            )
            if sid not in self._phrase_ids:
                self._phrase_ids[sid] = self._ids(signal_phrase(kind, sid, cfg))
            return self._phrase_ids[sid]

        return note

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
                self.signal_note(f, row),
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

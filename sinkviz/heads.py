"""Head roles: where each head of the token-level layers sends its attention, and a role when one place
dominates.

Each real query token's attention (summing to one) is split over seven disjoint key categories:

- `sink`, `separator`, `prompt`: keys of that role (`ctrsink.text.ROLES`);
- `first`: [CLS]/[SEP] (role `special`) or the first token (decoders have no [CLS]; their first token is a
  prompt token, the classic attention sink);
- `own_behavior`: content of the behavior the query belongs to (content, the sink and separator after it);
- `previous_behavior`: content of the behavior before it;
- `content`: every other content token (other behaviors, the target item's tokens).

Mass by key role comes from `sinkviz.reduce.RoleMass` (the same reduction as the analysis' `role_mass` table,
summed over query roles); `HeadMass` adds what roles alone do not tell: the first token, and the query's own
and previous behavior. A head's mass is the mean over every real query of the fields asked for (query-count
weighted over fields). Its role is the category holding at least `threshold` of it (default 0.5), else
`mixed`. Only the lower layers are classified: the upper layers of a split-layer model see pooled field
vectors.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ctrsink.model import CTRModel
from ctrsink.run import ModelBundle
from ctrsink.text import ROLE_ID, ROLES
from sinkviz.attribution import token_groups
from sinkviz.hooks import AttentionEvent, capture
from sinkviz.reduce import FieldBatch, RoleMass
from sinkviz.studies import TABLE_COLUMNS, Study, open_study, write_tables

CATEGORIES = ("sink", "separator", "first", "prompt", "own_behavior", "previous_behavior", "content")
MIXED = "mixed"
THRESHOLD = 0.5
_ROLE_CATEGORY = {"sink": "sink", "separator": "separator", "prompt": "prompt", "special": "first",
                  "behavior": "content", "target": "content"}  # fmt: skip


class HeadMass:
    """Streaming sums per (field, layer): `RoleMass`, plus mass on position 0 by its role and on own/previous
    behavior content (position 0 left out, so no key is counted twice)."""

    def __init__(self) -> None:
        self.roles = RoleMass()
        self.extra: dict[tuple[str, int], np.ndarray] = {}  # (H, R + 2): position 0 by role, own, previous

    def update(self, field: str, layer: int, pattern: torch.Tensor, fb: FieldBatch) -> None:
        pattern = pattern.double()
        self.roles.update(field, layer, pattern, fb)
        q = fb.valid.double()  # (B, T) real queries
        first = torch.einsum("bht,bt->bh", pattern[..., 0], q)  # (B, H) mass on position 0
        role0 = torch.nn.functional.one_hot(fb.roles[:, 0], len(ROLES)).double()
        by_role = first.T @ role0  # (H, R)
        group = token_groups(fb.roles, fb.behavior)  # the behavior each query belongs to
        content = (fb.roles == ROLE_ID["behavior"]) & (fb.behavior >= 0) & fb.valid
        content[:, 0] = False
        own = (fb.behavior[:, None, :] == group[:, :, None]) & (group[:, :, None] >= 0)
        prev = (fb.behavior[:, None, :] == group[:, :, None] - 1) & (group[:, :, None] >= 1)
        sums = [
            torch.einsum("bhqk,bqk,bq->h", pattern, (m & content[:, None]).double(), q) for m in (own, prev)
        ]
        row = torch.cat([by_role, torch.stack(sums, 1)], 1).numpy()
        acc = self.extra.setdefault((field, layer), np.zeros_like(row))
        acc += row

    def table(self) -> pd.DataFrame:
        """field, layer, head, category, mass (mean over real queries), count (real queries)."""
        rows = []
        for (field, layer), (sums, counts) in sorted(self.roles.acc.items()):
            n = counts.sum()
            key_role = sums.sum(1)  # (H, R): summed over query roles
            extra = self.extra[(field, layer)]
            for h in range(key_role.shape[0]):
                mass = dict.fromkeys(CATEGORIES, 0.0)
                for r, name in enumerate(ROLES):
                    if name in _ROLE_CATEGORY:
                        moved = 0.0 if name == "special" else extra[h, r]  # position 0 goes to `first`
                        mass[_ROLE_CATEGORY[name]] += key_role[h, r] - moved
                        mass["first"] += moved
                mass["own_behavior"], mass["previous_behavior"] = extra[h, -2], extra[h, -1]
                mass["content"] -= extra[h, -2] + extra[h, -1]
                rows += [(field, layer, h, c, mass[c] / max(n, 1), int(n)) for c in CATEGORIES]
        return pd.DataFrame(rows, columns=list(TABLE_COLUMNS["head_mass"]))


def classify(
    head_mass: pd.DataFrame,
    threshold: float = THRESHOLD,
    fields: Sequence[str] | None = None,
    label: str = "history",
) -> pd.DataFrame:
    """One row per (layer, head) over `fields` (None: all in the table), query-count weighted: the role (the
    category with >= threshold of the mass, else `mixed`), the top mass, and the mass of every category."""
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    part = head_mass if fields is None else head_mass[head_mass["field"].isin(list(fields))]
    if part.empty:
        return pd.DataFrame(columns=[*TABLE_COLUMNS["head_roles"], *CATEGORIES])
    weighted = part.assign(w=part["mass"] * part["count"])
    grid = weighted.pivot_table(index=["layer", "head"], columns="category", values="w", aggfunc="sum")
    counts = part.drop_duplicates(["field", "layer", "head"]).groupby(["layer", "head"])["count"].sum()
    grid = grid.div(counts.clip(lower=1), axis=0)[list(CATEGORIES)]
    top = grid.idxmax(axis=1)
    top_mass = grid.max(axis=1)
    out = grid.reset_index()
    out.insert(0, "field", label)
    out.insert(3, "role", np.where(top_mass.to_numpy() >= threshold, top.to_numpy(), MIXED))
    out.insert(4, "top_mass", top_mass.to_numpy())
    out.insert(5, "threshold", float(threshold))
    return out.astype({"layer": "int64", "head": "int64"})


def head_mass_study(study: Study) -> pd.DataFrame:
    """Mass per (field, lower layer, head, category) over the study's samples, from one captured pass."""
    model: CTRModel = study.model
    reducer = HeadMass()
    batch_fields: dict[str, FieldBatch] = {}

    def on_pattern(event: AttentionEvent) -> None:
        if event.field in batch_fields and event.layer < model.split_at:
            reducer.update(event.field, event.layer, event.pattern.float().cpu(), batch_fields[event.field])

    with torch.no_grad(), capture(model, callback=on_pattern):
        for batch in study.batches():
            batch_fields.clear()
            batch_fields.update(
                {f: FieldBatch.from_field(t, batch["sample_id"]) for f, t in batch["fields"].items()}
            )
            model(batch["fields"], pooling=study.pooling)
    return reducer.table()


def roles_table(
    head_mass: pd.DataFrame, history: Sequence[str], threshold: float = THRESHOLD
) -> pd.DataFrame:
    """Roles over the history fields together ("history"), then per field."""
    parts = [classify(head_mass, threshold, history, "history")]
    parts += [classify(head_mass, threshold, [f], f) for f in sorted(head_mass["field"].unique())]
    return pd.concat([p for p in parts if not p.empty], ignore_index=True)


def head_roles(
    run_or_bundle: str | Path | ModelBundle,
    split: str = "test",
    samples: int = 256,
    out: str | Path | None = None,
    *,
    threshold: float = THRESHOLD,
    **options: Any,
) -> pd.DataFrame:
    """Head roles of a run on the seeded choice of `samples` rows of `split` (history fields together, then
    per field); `head_mass` and `head_roles` are written to `out` when given. `options` as `open_study`."""
    if not 0 < threshold <= 1:
        from ctrsink.errors import CtrSinkError

        raise CtrSinkError(f"option '--threshold': {threshold} is not in (0, 1]")
    study = open_study(run_or_bundle, split, samples, **options)
    mass = head_mass_study(study)
    roles = roles_table(mass, study.model.history_fields, threshold)
    if out is not None:
        write_tables(out, "heads", study, {"head_mass": mass, "head_roles": roles}, threshold=threshold)
    return roles

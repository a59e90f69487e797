"""Streaming reductions of captured attention, fed one (field, layer, batch) pattern at a time.

Only sums and counts are kept (a few (H, K, K) arrays per field and layer), so a whole test split fits in memory;
full token-level maps are kept for a capped set of chosen samples. Anchors are the tokens the sink analyses look
at: the sink after behavior k, or, for runs without sinks, the first separator token after behavior k, so a
baseline and a CTR-Sink run are measured on the same footing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ctrsink.text import ROLE_ID, ROLES

# the sink-metric table's columns; sinkviz.artifacts pins every table's columns from here
SINK_METRIC_COLUMNS = (
    "field",
    "layer",
    "head",
    "key",
    "anchor_index",
    "eps",
    "n",
    "n_above",
    "share",
    "importance_mean",
)

ANCHORS = ("sink", "separator")
N_ROLES = len(ROLES)


@dataclass
class FieldBatch:
    """Per-token facts of one field of one batch (right-padded, CPU)."""

    roles: torch.Tensor  # (B, T) role ids (ctrsink.text.ROLES)
    behavior: torch.Tensor  # (B, T) kept-behavior index per token, -1 = none
    valid: torch.Tensor  # (B, T) bool, False on padding
    sample_ids: torch.Tensor  # (B,)

    @classmethod
    def from_field(
        cls, field: Mapping[str, torch.Tensor], sample_ids: Sequence[int] | torch.Tensor
    ) -> FieldBatch:
        valid = field["attention_mask"].bool().cpu()
        roles = field.get("token_roles")
        behavior = field.get("behavior_index")
        return cls(
            roles=roles.cpu() if roles is not None else valid.long() * ROLE_ID["special"],
            behavior=behavior.cpu() if behavior is not None else torch.full_like(valid, -1, dtype=torch.long),
            valid=valid,
            sample_ids=torch.as_tensor(sample_ids).cpu(),
        )

    @classmethod
    def dense(cls, batch: int, length: int, sample_ids: Sequence[int] | torch.Tensor) -> FieldBatch:
        """A sequence with no padding and no roles (the upper pass over field vectors)."""
        valid = torch.ones(batch, length, dtype=torch.bool)
        return cls(
            valid.long() * ROLE_ID["special"],
            -torch.ones(batch, length, dtype=torch.long),
            valid,
            torch.as_tensor(sample_ids).cpu(),
        )


# ------------------------------------------------------------------------------------------------ helpers


def visible(fb: FieldBatch, causal: bool) -> torch.Tensor:
    """(B, Tq, Tk) bool: valid query q may attend to valid key k (k <= q for decoders)."""
    allowed = fb.valid[:, :, None] & fb.valid[:, None, :]
    if causal:
        t = fb.valid.shape[1]
        allowed = allowed & torch.ones(t, t, dtype=torch.bool).tril()[None]
    return allowed


def anchor_positions(roles: torch.Tensor, behavior: torch.Tensor, anchor: str) -> torch.Tensor:
    """(B, K) token position of the anchor following behavior k, -1 where absent; K = largest k + 1.

    Sinks carry their behavior's index; separators do not, so a separator is an anchor when the token before it
    is behavior content, and follows that token's behavior.
    """
    if anchor == "sink":
        is_anchor = roles == ROLE_ID["sink"]
        follows = behavior
    elif anchor == "separator":
        prev_role = F.pad(roles, (1, 0), value=ROLE_ID["padding"])[:, :-1]
        prev_beh = F.pad(behavior, (1, 0), value=-1)[:, :-1]
        is_anchor = (roles == ROLE_ID["separator"]) & (prev_role == ROLE_ID["behavior"])
        follows = prev_beh
    else:
        raise ValueError(f"anchor must be one of {ANCHORS}, got {anchor!r}")
    is_anchor = is_anchor & (follows >= 0)
    b_idx, t_idx = is_anchor.nonzero(as_tuple=True)
    k = follows[b_idx, t_idx]
    width = int(k.max()) + 1 if k.numel() else 0
    pos = torch.full((roles.shape[0], width), -1, dtype=torch.long)
    pos[b_idx, k] = t_idx
    return pos


def gather_block(pattern: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """(B, H, T, T) pattern, (B, K) row and (B, M) column positions (>= 0) -> (B, H, K, M)."""
    b, h, _, t = pattern.shape
    picked = torch.gather(pattern, 2, rows[:, None, :, None].expand(b, h, rows.shape[1], t))
    return torch.gather(picked, 3, cols[:, None, None, :].expand(b, h, rows.shape[1], cols.shape[1]))


class Grid:
    """Sums (lead..., K, K) and counts (K, K) whose K grows with the largest index seen."""

    def __init__(self, lead: tuple[int, ...]) -> None:
        self.sum = np.zeros((*lead, 0, 0))
        self.count = np.zeros((0, 0))

    def add(self, sums: np.ndarray, counts: np.ndarray) -> None:
        k = max(self.count.shape[0], counts.shape[0])
        self.sum, self.count = _grow(self.sum, k), _grow(self.count, k)
        n = counts.shape[0]
        self.sum[..., :n, :n] += sums
        self.count[:n, :n] += counts


def _grow(a: np.ndarray, k: int) -> np.ndarray:
    pad = k - a.shape[-1]
    return a if pad <= 0 else np.pad(a, [(0, 0)] * (a.ndim - 2) + [(0, pad), (0, pad)])


# ------------------------------------------------------------------------------------------------ reducers


class RoleMass:
    """Mean attention mass a query of role r puts on keys of role s, per head (rows sum to 1 over s)."""

    def __init__(self) -> None:
        self.acc: dict[tuple[str, int], list[np.ndarray]] = {}

    def update(self, field: str, layer: int, pattern: torch.Tensor, fb: FieldBatch) -> None:
        onehot = F.one_hot(fb.roles, N_ROLES).to(pattern.dtype)  # (B, T, R)
        per_query = pattern @ onehot[:, None]  # (B, H, Tq, R): mass on each key role
        queries = onehot * fb.valid[..., None].to(pattern.dtype)
        sums = torch.einsum("bhtr,bts->hsr", per_query, queries).double().numpy()
        counts = queries.sum((0, 1)).double().numpy()
        acc = self.acc.setdefault((field, layer), [np.zeros_like(sums), np.zeros_like(counts)])
        acc[0] += sums
        acc[1] += counts

    def table(self, heads: Sequence[int] | None = None) -> pd.DataFrame:
        rows = []
        for (field, layer), (sums, counts) in sorted(self.acc.items()):
            for h in range(sums.shape[0]):
                for q in range(1, N_ROLES):  # padding never queries and never receives attention
                    if counts[q] == 0:
                        continue
                    for k in range(1, N_ROLES):
                        rows.append(
                            (
                                field,
                                layer,
                                _head(heads, h),
                                ROLES[q],
                                ROLES[k],
                                sums[h, q, k] / counts[q],
                                int(counts[q]),
                            )
                        )
        cols = ["field", "layer", "head", "query_role", "key_role", "mass", "count"]
        return pd.DataFrame(rows, columns=cols)


class Entropy:
    """Mean attention entropy (nats) over valid queries, and entropy / log(number of visible keys)."""

    def __init__(self) -> None:
        self.acc: dict[tuple[str, int], np.ndarray] = {}

    def update(self, field: str, layer: int, pattern: torch.Tensor, fb: FieldBatch, causal: bool) -> None:
        logp = pattern.clamp_min(1e-30).log_()  # p = 0 contributes 0 * log(tiny) = 0
        # a batched dot product is ~3x faster on CPU than an elementwise product and a sum
        ent = -(pattern.unsqueeze(-2) @ logp.unsqueeze(-1)).reshape(pattern.shape[:-1])  # (B, H, T)
        n_vis = visible(fb, causal).sum(-1)  # (B, T)
        q = fb.valid.to(ent.dtype)
        normed = fb.valid & (n_vis > 1)
        norm = ent / n_vis.clamp(min=2).to(ent.dtype).log()[:, None]
        row = np.concatenate(
            [
                (ent * q[:, None]).sum((0, 2)).double().numpy(),
                (norm * normed[:, None].to(ent.dtype)).sum((0, 2)).double().numpy(),
                [float(q.sum()), float(normed.sum())],
            ]
        )
        acc = self.acc.setdefault((field, layer), np.zeros_like(row))
        acc += row

    def table(self, heads: Sequence[int] | None = None) -> pd.DataFrame:
        rows = []
        for (field, layer), a in sorted(self.acc.items()):
            nh = (len(a) - 2) // 2
            n, n_norm = a[-2], a[-1]
            for h in range(nh):
                rows.append(
                    (
                        field,
                        layer,
                        _head(heads, h),
                        a[h] / max(n, 1),
                        a[nh + h] / n_norm if n_norm else np.nan,
                        int(n),
                    )
                )
        return pd.DataFrame(rows, columns=["field", "layer", "head", "entropy", "entropy_norm", "count"])


class GridReducer:
    """Per (field, layer) grids; tidy per-head table and arrays stacked over layers."""

    what = "behavior"  # names the table's index columns: query_{what}, key_{what}

    def __init__(self) -> None:
        self.acc: dict[tuple[str, int], Grid] = {}

    def table(self, heads: Sequence[int] | None = None) -> pd.DataFrame:
        return grid_table(self.acc, heads, self.what)

    def stacked(self, num_layers: int) -> dict[str, np.ndarray]:
        """{field: (sum (L, [H,] K, K), count (L, K, K))}; layers that never saw the field count 0."""
        out = {}
        for field in sorted({f for f, _ in self.acc}):
            grids = {layer: g for (f, layer), g in self.acc.items() if f == field}
            k = max(g.count.shape[0] for g in grids.values())
            lead = next(iter(grids.values())).sum.shape[:-2]
            sums, counts = np.zeros((num_layers, *lead, k, k)), np.zeros((num_layers, k, k))
            for layer, g in grids.items():
                n = g.count.shape[0]
                sums[layer, ..., :n, :n] = g.sum
                counts[layer, :n, :n] = g.count
            out[field] = (sums, counts)
        return out


class AnchorMatrix(GridReducer):
    """Attention among anchors, aligned by the behavior each anchor follows: sums (H, K, K), counts (K, K)."""

    what = "anchor"

    def __init__(self, anchor: str) -> None:
        super().__init__()
        self.anchor = anchor

    def update(self, field: str, layer: int, pattern: torch.Tensor, fb: FieldBatch) -> None:
        pos = anchor_positions(fb.roles, fb.behavior, self.anchor)
        if pos.shape[1] == 0:
            return
        present = pos >= 0
        block = gather_block(pattern, pos.clamp(min=0), pos.clamp(min=0))  # (B, H, K, K)
        pair = (present[:, :, None] & present[:, None, :]).to(block.dtype)
        grid = self.acc.setdefault((field, layer), Grid((pattern.shape[1],)))
        grid.add((block * pair[:, None]).sum(0).double().numpy(), pair.sum(0).double().numpy())


class Affinity(GridReducer):
    """The inter-sink bias modules' own affinity A (B, m, m) (sink slots in sequence order), aligned like sinks."""

    what = "anchor"

    def update(self, field: str, layer: int, affinity: torch.Tensor, fb: FieldBatch) -> bool:
        is_sink = fb.roles == ROLE_ID["sink"]
        m = int(is_sink.sum(1).max()) if is_sink.numel() else 0
        if m == 0 or tuple(affinity.shape) != (fb.roles.shape[0], m, m):
            return False  # the module did not run on this batch: its last_affinity is stale
        order = torch.sort((~is_sink).to(torch.int8), dim=1, stable=True).indices[:, :m]
        slot_ok = torch.arange(m)[None] < is_sink.sum(1, keepdim=True)
        k = torch.where(slot_ok, fb.behavior.gather(1, order), torch.full_like(order, -1))
        width = int(k.max()) + 1
        sums = torch.zeros(width, width, dtype=torch.float64)
        counts = torch.zeros(width, width, dtype=torch.float64)
        pair = slot_ok[:, :, None] & slot_ok[:, None, :]
        b, i, j = pair.nonzero(as_tuple=True)
        ki, kj = k[b, i], k[b, j]
        sums.index_put_((ki, kj), affinity.cpu().double()[b, i, j], accumulate=True)
        counts.index_put_((ki, kj), torch.ones_like(ki, dtype=torch.float64), accumulate=True)
        self.acc.setdefault((field, layer), Grid(())).add(sums.numpy(), counts.numpy())
        return True


class BehaviorMap(GridReducer):
    """Behavior i -> behavior j: mean over i's content tokens of the attention they put on j's content tokens."""

    def update(self, field: str, layer: int, pattern: torch.Tensor, fb: FieldBatch) -> None:
        content = (fb.roles == ROLE_ID["behavior"]) & (fb.behavior >= 0) & fb.valid
        if not content.any():
            return
        n = int(fb.behavior[content].max()) + 1
        span = F.one_hot(fb.behavior.clamp(min=0), n).to(pattern.dtype) * content[..., None].to(pattern.dtype)
        per_query = pattern @ span[:, None]  # (B, H, T, N): mass each query puts on each behavior
        summed = torch.einsum("bhtn,btm->bhmn", per_query, span)  # summed over the query span
        tokens = span.sum(1)  # (B, N)
        mean = summed / tokens.clamp(min=1)[:, None, :, None]
        present = tokens > 0
        pair = (present[:, :, None] & present[:, None, :]).to(mean.dtype)
        grid = self.acc.setdefault((field, layer), Grid((pattern.shape[1],)))
        grid.add((mean * pair[:, None]).sum(0).double().numpy(), pair.sum(0).double().numpy())


class SinkMetric:
    """Gu et al.'s metric: importance of key k = mean attention from the queries allowed to see it.

    Sink_eps = share of (sample, head) whose importance of some anchor exceeds eps. Reported for any anchor,
    per anchor index, and for the first token (the classic attention sink) as a reference.
    """

    def __init__(self, anchor: str, eps: Sequence[float] = (0.3,)) -> None:
        self.anchor = anchor
        self.eps = tuple(float(e) for e in eps)
        self.acc: dict[tuple[str, int, str, int], np.ndarray] = {}  # (field, layer, key, k) -> per head stats

    def _add(self, key: tuple[str, int, str, int], imp: torch.Tensor, has: torch.Tensor) -> None:
        """imp (B, H) importance; has (B,) samples where the key exists."""
        if not has.any():
            return
        imp = imp[has].double()
        stats = [torch.full((imp.shape[1],), float(imp.shape[0]), dtype=torch.float64), imp.sum(0)]
        stats += [(imp > e).sum(0).double() for e in self.eps]
        row = torch.stack(stats).numpy()  # (2 + E, H): n, importance sum, n above each eps
        acc = self.acc.setdefault(key, np.zeros_like(row))
        acc += row

    def update(self, field: str, layer: int, pattern: torch.Tensor, fb: FieldBatch, causal: bool) -> None:
        # blocked (query, key) pairs already hold 0 in the pattern, so summing over all valid queries is
        # summing over the allowed ones; only the divisor needs the causal count
        n_allowed = visible(fb, causal).sum(1).clamp(min=1)  # (B, Tk)
        q = fb.valid.to(pattern.dtype)[:, None, None, :]  # (B, 1, 1, Tq)
        received = (q @ pattern).squeeze(2) / n_allowed[:, None].to(pattern.dtype)  # (B, H, Tk)
        self._add((field, layer, "first_token", -1), received[:, :, 0], fb.valid[:, 0])
        pos = anchor_positions(fb.roles, fb.behavior, self.anchor)
        if pos.shape[1] == 0:
            return
        present = pos >= 0
        per_anchor = received.gather(2, pos.clamp(min=0)[:, None].expand(-1, received.shape[1], -1))
        per_anchor = per_anchor.masked_fill(~present[:, None], float("-inf"))  # (B, H, K)
        self._add((field, layer, "any_anchor", -1), per_anchor.max(-1).values, present.any(1))
        for k in range(pos.shape[1]):
            self._add((field, layer, "anchor", k), per_anchor[:, :, k], present[:, k])

    def table(self, heads: Sequence[int] | None = None) -> pd.DataFrame:
        rows = []
        for (field, layer, key, k), a in sorted(self.acc.items()):
            for h in range(a.shape[1]):
                n = a[0, h]
                for e_i, eps in enumerate(self.eps):
                    above = a[2 + e_i, h]
                    rows.append(
                        (
                            field,
                            layer,
                            _head(heads, h),
                            key,
                            k,
                            eps,
                            int(n),
                            int(above),
                            above / n,
                            a[1, h] / n,
                        )
                    )
        cols = list(SINK_METRIC_COLUMNS)
        return pd.DataFrame(rows, columns=cols)


def _head(heads: Sequence[int] | None, h: int) -> int:
    return int(heads[h]) if heads is not None else h


def grid_table(acc: Mapping[tuple[str, int], Grid], heads: Sequence[int] | None, what: str) -> pd.DataFrame:
    """Tidy per-head means of (H, K, K) grids: field, layer, head, query_{what}, key_{what}, mass, count."""
    rows = []
    for (field, layer), g in sorted(acc.items()):
        qi, ki = np.nonzero(g.count)
        for h in range(g.sum.shape[0]):
            for i, j in zip(qi.tolist(), ki.tolist()):
                rows.append(
                    (field, layer, _head(heads, h), i, j, g.sum[h, i, j] / g.count[i, j], int(g.count[i, j]))
                )
    return pd.DataFrame(
        rows, columns=["field", "layer", "head", f"query_{what}", f"key_{what}", "mass", "count"]
    )

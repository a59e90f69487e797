"""The streaming analysis of one capture: hook tensors in, per-row distributions reduced to tables at each batch
end (only (B, L) arrays are kept)."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from sinkviz.artifacts import ID_TABLE_COLUMNS
from sinkviz.idrows.points import BRANCHES, CANDIDATES, RAW_WEIGHT_MODULES, parse_point
from sinkviz.idrows.reductions import (
    boundary_tokens,
    bucket_mass,
    entropy,
    gap_hours,
    js_divergence,
    keys_for_mass,
    normalise,
    top_category_overlap,
)

log = logging.getLogger("sinkviz.idrows")


@dataclass
class _Dist:
    dist: np.ndarray  # (B, L), NaN rows where the module put no mass on real history
    outside: np.ndarray  # (B,)
    negative: np.ndarray  # (B,)


class IDRowsAnalysis:
    """Streaming reductions for one capture; pass it as the `callback` of `sinkviz.hooks.capture_points`.

    Per batch: `set_batch(fields, sample_ids, pairs)` (the batch holds `pairs` true candidates, then the same
    samples' other candidates in the same order), the forward, then `finish_batch()`.
    """

    def __init__(self, n_gap_ids: int, n_buckets: int, boundary_gaps: int) -> None:
        self.n_gap_ids = n_gap_ids  # size of the hist_gap id space (0 = padding)
        self.n_buckets = n_buckets  # real buckets 1..n_buckets
        self.boundary_gaps = boundary_gaps
        self.seen: set[str] = set()
        self._rows: dict[str, list[pd.DataFrame]] = defaultdict(list)
        self._gap: dict[tuple[str, int, str], np.ndarray] = {}  # -> (n_gap_ids, 3): mass, uniform, tokens
        self._gap_rows: dict[tuple[str, int, str], int] = defaultdict(int)
        self._chunks: dict[tuple[int, str, int], np.ndarray] = {}  # (layer, cand, distance) -> mass, share, n
        self._pending: dict[tuple[str, int], Any] = {}
        self._fields: dict[str, np.ndarray] = {}
        self._sample_ids = np.zeros(0, dtype=np.int64)
        self._pairs = 0

    # ---- capture side ---------------------------------------------------------------------------------
    def set_batch(
        self, fields: Mapping[str, torch.Tensor], sample_ids: Sequence[int] | torch.Tensor, pairs: int
    ) -> None:
        self._fields = {k: v.detach().cpu().numpy() for k, v in fields.items()}
        self._sample_ids = np.asarray(torch.as_tensor(sample_ids).cpu())
        self._pairs = pairs
        self._pending = {}
        if len(self._sample_ids) != 2 * pairs:
            raise ValueError(f"a batch of {pairs} pairs needs {2 * pairs} rows, got {len(self._sample_ids)}")

    def __call__(self, name: str, tensor: torch.Tensor) -> None:
        point = parse_point(name)
        if point is None:
            return
        self.seen.add(name)
        module, layer = point
        t = tensor.detach().float().cpu()
        length = self._fields["hist_mask"].shape[1]
        if t.shape[0] != len(self._sample_ids):  # a folded forward: sequences are groups, not rows
            raise ValueError(
                f"{name}: {t.shape[0]} sequences for {len(self._sample_ids)} rows; capture with `model.fold = False`"
            )
        if module == "chunks":
            self._pending[point] = t.long().numpy()
        elif module in RAW_WEIGHT_MODULES:
            self._pending[point] = t.double().numpy()  # signed: |w| and the negative share in finish_batch
        elif module in ("cross", "query"):
            self._pending[point] = t.mean(dim=(1, 2)).double().numpy()  # heads (and the M queries)
        else:  # SparseCTR-lite: (B, H, T, keys); keep the candidate's query row only
            if t.shape[2] != length + 1:
                raise ValueError(
                    f"{name}: {t.shape[2]} query positions for {length} history tokens; expected the history and "
                    "one candidate (`model.fold = False`)"
                )
            self._pending[point] = t[:, :, -1, :].mean(1).double().numpy()

    # ---- reduction side ---------------------------------------------------------------------------------
    def finish_batch(self) -> None:
        f, k = self._fields, self._pairs
        mask = f["hist_mask"].astype(bool)
        n_keys = mask.sum(1)
        cats, target_cat = f["hist_cat"], f["target_cat"]
        recurring = ((cats == target_cat[:, None]) & mask).any(1)
        status = np.where(recurring, "recurring", "new")
        cand = np.array(["true"] * k + ["other"] * k)
        boundary = boundary_tokens(f["hist_ts"], mask, self.boundary_gaps)
        base = pd.DataFrame({"sample_id": self._sample_ids, "candidate": cand})

        dists: dict[tuple[str, int], _Dist] = {}
        for (module, layer), value in sorted(self._pending.items()):
            if module in RAW_WEIGHT_MODULES:
                absolute = np.abs(value)
                with np.errstate(invalid="ignore", divide="ignore"):
                    negative = np.where(value < 0, absolute, 0.0).sum(1) / absolute.sum(1)
                dist, outside = normalise(absolute, mask)
                dists[(module, layer)] = _Dist(dist, outside, negative)
            elif module in ("cross", "query", "transition", "local"):
                dist, outside = normalise(value, mask)
                dists[(module, layer)] = _Dist(dist, outside, np.zeros(len(dist)))
            elif module == "global":
                tokens = self._global_tokens(layer, value, mask)
                if tokens is not None:
                    dist, outside = normalise(tokens, mask)
                    dists[(module, layer)] = _Dist(dist, outside, np.zeros(len(dist)))
            elif module == "gates":
                self._add_gates(base, layer, value, status, n_keys)

        for (module, layer), d in dists.items():
            with np.errstate(invalid="ignore", divide="ignore"):
                h = entropy(d.dist)
                same_share = ((cats == target_cat[:, None]) & mask).sum(1) / n_keys
                expected = (boundary & mask).sum(1) / n_keys
                norm = np.where(n_keys > 1, h / np.log(np.maximum(n_keys, 2)), np.nan)
            table = base.assign(
                module=module,
                layer=layer,
                n_keys=n_keys,
                cat_status=status,
                entropy=h,
                entropy_norm=norm,
                keys90=keys_for_mass(d.dist),
                top3_same_cat=top_category_overlap(d.dist, cats, target_cat),
                same_cat_share=same_share,
                boundary_mass=np.where(np.isnan(h), np.nan, np.nansum(d.dist * boundary, axis=1)),
                boundary_expected=expected,
                outside_mass=d.outside,
                negative_mass=d.negative,
            )
            self._rows["distributions"].append(table[~np.isnan(h)])
            js = js_divergence(d.dist[:k], d.dist[k:])
            cond = pd.DataFrame(
                {
                    "sample_id": self._sample_ids[:k],
                    "module": module,
                    "layer": layer,
                    "js": js,
                    "same_category": target_cat[:k] == target_cat[k:],
                }
            )
            self._rows["conditioning"].append(cond[~np.isnan(js)])
            self._add_gap_mass(module, layer, d.dist, f["hist_gap"], mask, cand)
        self._pending = {}

    def _global_tokens(self, layer: int, chunk_mass: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
        """Spread each chunk summary's mass over its members; also accumulate the chunk-distance profile."""
        chunks = self._pending.get(("chunks", 0))
        if chunks is None:
            log.warning(
                "layer.%d.branch.global.probs without a `chunks` hook: no token-level global mass", layer
            )
            return None
        p = chunk_mass.shape[1]
        member = (chunks[:, :, None] == np.arange(p)[None, None, :]) & mask[:, :, None]  # (B, L, P)
        size = member.sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            per_token = np.where(size > 0, chunk_mass / np.maximum(size, 1), 0.0)
        tokens = np.einsum("blp,bp->bl", member, per_token)
        last = np.where(mask, chunks, -1).max(1)
        n = mask.sum(1)
        k = self._pairs
        for b in range(len(chunk_mass)):
            total = chunk_mass[b].sum()
            if n[b] == 0 or total <= 0:
                continue
            for c in range(int(last[b]) + 1):
                key = (layer, "true" if b < k else "other", int(last[b]) - c)  # 0 = the most recent chunk
                acc = self._chunks.setdefault(key, np.zeros(3))
                acc += (chunk_mass[b, c] / total, size[b, c] / n[b], 1)
        return tokens

    def _add_gates(
        self, base: pd.DataFrame, layer: int, gates: np.ndarray, status: np.ndarray, n_keys: np.ndarray
    ) -> None:
        with np.errstate(invalid="ignore", divide="ignore"):
            share = gates / gates.sum(1, keepdims=True)  # sigmoid gates need not sum to one
        for i, branch in enumerate(BRANCHES):
            self._rows["gates"].append(
                base.assign(
                    layer=layer,
                    branch=branch,
                    cat_status=status,
                    n_keys=n_keys,
                    gate=gates[:, i],
                    share=share[:, i],
                )
            )

    def _add_gap_mass(
        self, module: str, layer: int, dist: np.ndarray, gap: np.ndarray, mask: np.ndarray, cand: np.ndarray
    ) -> None:
        ok = ~np.isnan(dist).any(1)
        ids = np.where(mask, gap, 0)
        mass = bucket_mass(dist, ids, self.n_gap_ids)
        counts = bucket_mass(mask.astype(np.float64), ids, self.n_gap_ids)
        with np.errstate(invalid="ignore", divide="ignore"):
            uniform = counts / counts.sum(1, keepdims=True)
        for which in CANDIDATES:
            rows = ok & (cand == which)
            if not rows.any():
                continue
            key = (module, layer, which)
            acc = self._gap.setdefault(key, np.zeros((self.n_gap_ids, 3)))
            acc += np.stack([mass[rows].sum(0), uniform[rows].sum(0), counts[rows].sum(0)], axis=1)
            self._gap_rows[key] += int(rows.sum())

    # ---- tables -----------------------------------------------------------------------------------------
    def tables(self) -> dict[str, pd.DataFrame]:
        out = {
            name: _concat(self._rows.get(name, []), name)
            for name in ("distributions", "conditioning", "gates")
        }
        gap_rows = []
        for (module, layer, which), acc in sorted(self._gap.items()):
            rows = self._gap_rows[(module, layer, which)]
            for bucket in range(1, self.n_gap_ids):  # 0 = padding
                if acc[bucket, 2] > 0:
                    gap_rows.append(
                        (
                            module,
                            layer,
                            which,
                            bucket,
                            gap_hours(bucket, self.n_buckets),
                            acc[bucket, 0] / rows,
                            acc[bucket, 1] / rows,
                            int(acc[bucket, 2]),
                            rows,
                        )
                    )
        out["gap_mass"] = pd.DataFrame(gap_rows, columns=list(ID_TABLE_COLUMNS["gap_mass"]))
        chunk_rows = [
            (layer, which, dist, acc[0] / acc[2], acc[1] / acc[2], int(acc[2]))
            for (layer, which, dist), acc in sorted(self._chunks.items())
        ]
        out["chunk_mass"] = pd.DataFrame(chunk_rows, columns=list(ID_TABLE_COLUMNS["chunk_mass"]))
        return out


def _concat(frames: list[pd.DataFrame], name: str) -> pd.DataFrame:
    columns = list(ID_TABLE_COLUMNS[name])
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype="float64") for c in columns})
    return pd.concat(frames, ignore_index=True)[columns]

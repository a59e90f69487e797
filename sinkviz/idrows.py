"""Attention analyses of the ID-based comparison rows (DIN, SparseCTR-lite, SRP4CTR-lite).

These rows are our compact "-lite" re-implementations from the papers' descriptions
(../shared/reference/related-models.md §7), so nothing here is a paper's result.

Every analysed sample is scored twice on the same history: with its true candidate and with one other item (a
seeded random draw), in one batch, so the two candidates of a sample always sit `k` rows apart. The hook points
of the row (`IDModel.hook_points()`) are turned into one *candidate-over-history distribution* per row, module and
layer, at capture time (so only (B, L) arrays are kept):

    din.attn.weights                      (B, L) raw weights -> |w| / sum |w|  (DIN weights are not softmaxed and
                                          may be negative; for non-negative weights this is weights / sum)
    target.attn.probs                     (B, L) the same treatment (DIN-style target pooling)
    cross.layer.{l}.attn.probs            (B, H, 1, L) mean over heads
    query.layer.{l}.attn.probs            (B, H, M, L) mean over heads and the M queries (not candidate-specific)
    layer.{l}.branch.{transition,local}.probs   (B, H, T, T) the candidate's row (T - 1), mean over heads
    layer.{l}.branch.global.probs         (B, H, T, P) the candidate's row over chunk summaries; on tokens, each
                                          chunk's mass is spread evenly over its members (the summary is their mean)
    layer.{l}.gates                       (B, H, T, 3) the candidate's gates, mean over heads
    chunks                                (B, L) chunk ids, used by the global branch

Mass on keys that are not real history tokens (the candidate itself in the local branch, padding) is reported as
`outside_mass`; the distribution is renormalised over the real history so that it sums to one.
Tables (schemas in `sinkviz.artifacts.ID_TABLE_COLUMNS`) are per row where the page needs the spread, and summed
over rows where they would grow with the history length (gap and chunk profiles).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml

import ctrsink
from ctrsink.errors import CtrSinkError
from ctrsink.idview import HORIZON_DAYS, TAU_HOURS
from ctrsink.io import atomic_dir
from ctrsink.run import ModelBundle, load_run
from sinkviz.artifacts import (
    ID_KIND,
    ID_MANIFEST_KEYS,
    ID_SCHEMA_VERSION,
    ID_TABLE_COLUMNS,
    MANIFEST,
    AnalysisError,
    _check_columns,
)
from sinkviz.capture import _split_frame, choose_samples
from sinkviz.hooks import capture_points

log = logging.getLogger("sinkviz.idrows")

CANDIDATES = ("true", "other")
BRANCHES = ("global", "transition", "local")  # SparseCTR-lite's gate order
MODULE_ORDER = ("din", "target", "cross", "query", "global", "transition", "local")
RAW_WEIGHT_MODULES = {"din", "target"}  # unnormalised, possibly signed weights
TOP_K = 3  # top attended behaviors compared with the candidate's category
MASS_SHARE = 0.9  # keys holding this share of the mass (concentration)
# SparseCTR-lite's RelTemporal components, in the order of its bias tables (ctrsink/idmodels/sparsectr.py)
LAMBDA_COMPONENTS = {4: ("log_dt", "rel_pos", "hour_diff", "weekday")}

_POINTS: list[tuple[re.Pattern[str], str | None]] = [
    (re.compile(r"din\.attn\.weights"), "din"),
    (re.compile(r"target\.attn\.probs"), "target"),
    (re.compile(r"cross\.layer\.(\d+)\.attn\.probs"), "cross"),
    (re.compile(r"query\.layer\.(\d+)\.attn\.probs"), "query"),
    (re.compile(r"layer\.(\d+)\.branch\.(global|transition|local)\.probs"), None),  # module = the branch
    (re.compile(r"layer\.(\d+)\.gates"), "gates"),
    (re.compile(r"chunks"), "chunks"),
]


def parse_point(name: str) -> tuple[str, int] | None:
    """(module, layer) of a hook name these analyses use; None for the others (e.g. encoder self-attention)."""
    for pattern, module in _POINTS:
        m = pattern.fullmatch(name)
        if m:
            groups = m.groups()
            layer = int(groups[0]) if groups else 0
            return (module or groups[1]), layer
    return None


def series_label(module: str, layer: int) -> str:
    """'din', 'cross L1', 'local L0': single-layer modules carry no layer."""
    return module if module in RAW_WEIGHT_MODULES else f"{module} L{layer}"


# ------------------------------------------------------------------------------------------------ reductions


def normalise(weights: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distribution over the L history keys (NaN rows where no mass is on real keys), outside mass share).

    `weights` (B, K >= L) non-negative, the first L columns the history keys, any further ones other keys.
    """
    length = mask.shape[1]
    hist = np.where(mask, weights[:, :length], 0.0)
    inside, total = hist.sum(1), weights.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        dist = np.where((inside > 0)[:, None], hist / inside[:, None], np.nan)
        outside = np.where(total > 0, 1.0 - inside / total, np.nan)
    return dist, outside


def entropy(dist: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) per row; NaN rows stay NaN."""
    with np.errstate(invalid="ignore", divide="ignore"):
        terms = np.where(dist > 0, dist * np.log(np.where(dist > 0, dist, 1.0)), 0.0)
    out = -terms.sum(1)
    return np.where(np.isnan(dist).any(1), np.nan, out)


def keys_for_mass(dist: np.ndarray, share: float = MASS_SHARE) -> np.ndarray:
    """Fewest keys holding `share` of each row's mass (float, NaN rows NaN)."""
    ordered = -np.sort(-np.nan_to_num(dist), axis=1)
    reached = np.cumsum(ordered, axis=1) >= share - 1e-9
    out = reached.argmax(1).astype(np.float64) + 1
    return np.where(np.isnan(dist).any(1), np.nan, out)


def js_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence per row in bits (0 = identical, 1 = disjoint support); NaN if either is NaN."""
    m = 0.5 * (p + q)

    def kl(a: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.where(a > 0, a / np.where(m > 0, m, 1.0), 1.0)
            return np.where(a > 0, a * np.log2(ratio), 0.0).sum(1)

    out = np.clip(0.5 * kl(p) + 0.5 * kl(q), 0.0, 1.0)
    return np.where(np.isnan(p).any(1) | np.isnan(q).any(1), np.nan, out)


def bucket_mass(dist: np.ndarray, bucket_ids: np.ndarray, n_ids: int) -> np.ndarray:
    """(B, n_ids) mass per bucket id (e.g. the batch's `hist_gap`); each non-NaN row sums to its total mass."""
    onehot = bucket_ids[:, :, None] == np.arange(n_ids)[None, None, :]
    return np.einsum("bl,blk->bk", np.nan_to_num(dist), onehot)


def boundary_tokens(ts: np.ndarray, mask: np.ndarray, gaps: int) -> np.ndarray:
    """(B, L) bool: the two behaviors on either side of each of the row's `gaps` largest time gaps.

    Mirrors SparseCTR-lite's personalised chunking (same gaps, earliest first among equal ones), so for that row
    these are exactly the tokens at chunk edges; for the other rows it is the same rule on the same timestamps.
    """
    b, length = ts.shape
    diff = np.full((b, length), -np.inf)
    real = mask[:, 1:] & mask[:, :-1]
    diff[:, 1:] = np.where(real, (ts[:, 1:] - ts[:, :-1]).astype(np.float64), -np.inf)
    cut = np.zeros((b, length), dtype=bool)
    if gaps > 0 and length > 1:
        order = np.argsort(-diff, axis=1, kind="stable")[:, :gaps]
        np.put_along_axis(cut, order, True, axis=1)
    cut &= diff > -np.inf
    out = cut.copy()
    out[:, :-1] |= cut[:, 1:]  # the behavior before the gap
    return out


def top_category_overlap(
    dist: np.ndarray, cats: np.ndarray, target: np.ndarray, k: int = TOP_K
) -> np.ndarray:
    """Share of the top-min(k, n) attended behaviors whose category is the candidate's; NaN rows NaN."""
    n = (np.nan_to_num(dist) > 0).sum(1)
    order = np.argsort(-np.nan_to_num(dist), axis=1, kind="stable")[:, :k]
    same = np.take_along_axis(cats, order, axis=1) == target[:, None]
    take = np.arange(min(k, dist.shape[1]))[None, :] < np.minimum(n, k)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (same & take).sum(1) / take.sum(1)
    return np.where(np.isnan(dist).any(1) | (n == 0), np.nan, out)


def gap_hours(bucket: int, n_buckets: int) -> float:
    """Lower edge (hours) of a `hist_gap` id (1..n_buckets): inverts `time_gap_bucket` with the ID view's scale."""
    c = (n_buckets - 1) / math.log1p(HORIZON_DAYS * 24.0 / TAU_HOURS)
    return float(TAU_HOURS * math.expm1(max(bucket - 1, 0) / c))


def lambda_table(model: torch.nn.Module) -> pd.DataFrame:
    """Temporal bias coefficients per layer, head and component, from parameters named like lambda (or `lam`)."""
    rows = []
    for name, param in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1].lower()
        if "lambda" not in name.lower() and leaf not in ("lam", "lams"):
            continue
        values = param.detach().float().cpu().numpy()
        values = values.reshape(1, -1) if values.ndim < 2 else values.reshape(-1, values.shape[-1])
        found = re.search(r"(?:^|\.)(\d+)\.", name)
        layer = int(found.group(1)) if found else 0
        names = LAMBDA_COMPONENTS.get(values.shape[1], tuple(f"c{i}" for i in range(values.shape[1])))
        shared = values.shape[0] == 1
        for h, row in enumerate(values):
            for c, value in enumerate(row):
                rows.append((name, layer, -1 if shared else h, names[c], float(value)))
    return pd.DataFrame(rows, columns=list(ID_TABLE_COLUMNS["lambdas"])).astype(
        {"layer": "int64", "head": "int64", "value": "float64"}
    )


# ------------------------------------------------------------------------------------------------ the analysis


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


# ------------------------------------------------------------------------------------------------ capture


def run_model_name(run_dir: str | Path) -> str | None:
    """The `model` of a run's config.yaml ("ctrsink" when unset); None when there is no config.yaml."""
    file = Path(run_dir) / "config.yaml"
    if not file.is_file():
        return None
    config = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    return str(config.get("model", "ctrsink")) if isinstance(config, dict) else None


def other_items(targets: Sequence[int], n_items: int, seed: int) -> np.ndarray:
    """A seeded uniform draw of another item (item_idx) per target, never the target itself."""
    if n_items < 2:
        raise CtrSinkError("the ID-row analysis needs at least two items to draw another candidate")
    rng = np.random.default_rng([seed, 1])  # its own stream: the sample choice uses `seed` alone
    draw = rng.integers(0, n_items - 1, size=len(targets))
    return draw + (draw >= np.asarray(targets, dtype=np.int64))


def analyse_id_rows(
    bundle: ModelBundle,
    rows: list[dict[str, Any]],
    others: Sequence[int],
    batch_size: int,
    boundary_gaps: int,
) -> tuple[IDRowsAnalysis, pd.DataFrame]:
    """Score every row with its true and its other candidate under capture; -> (reductions, predictions)."""
    model, batcher = bundle.model, bundle.batcher
    n_buckets = batcher.n_buckets
    analysis = IDRowsAnalysis(batcher.vocab.time_buckets, n_buckets, boundary_gaps)
    pairs = max(1, batch_size // 2)
    predictions = []
    model.eval()  # dropout would make the weights random
    fold = getattr(model, "fold", None)
    if fold is not None:
        model.fold = False  # one sequence per row, so hook tensors map 1:1 onto batch rows
    try:
        with torch.no_grad(), capture_points(model, lambda n: parse_point(n) is not None, analysis):
            for start in range(0, len(rows), pairs):
                chunk = rows[start : start + pairs]
                alt = [dict(r, item_idx=int(o)) for r, o in zip(chunk, others[start : start + pairs])]
                batch = batcher(chunk + alt)
                analysis.set_batch(batch["fields"], batch["sample_id"], len(chunk))
                logits = model(batch["fields"]).float().cpu().numpy()
                analysis.finish_batch()
                predictions.append(
                    pd.DataFrame(
                        {
                            "sample_id": batch["sample_id"].numpy(),
                            "user_id": [str(r.get("user_id", "")) for r in chunk + alt],
                            "candidate": ["true"] * len(chunk) + ["other"] * len(chunk),
                            "item_idx": [int(r["item_idx"]) for r in chunk + alt],
                            "category": batch["fields"]["target_cat"].numpy(),
                            "label": [float(r["label"]) for r in chunk] + [np.nan] * len(chunk),
                            "logit": logits,
                        }
                    )
                )
                log.info("captured %d/%d samples", min(start + pairs, len(rows)), len(rows))
    finally:
        if fold is not None:
            model.fold = fold
    if not analysis.seen:
        raise CtrSinkError(
            f"{type(model).__name__} exposes none of the hook points this analysis reads "
            f"(it has {', '.join(sorted(model.hook_points())) or 'none'})"
        )
    return analysis, _concat(predictions, "predictions")


def capture_id_run(
    run_dir: str | Path,
    out_dir: str | Path,
    split: str = "test",
    samples: int = 256,
    seed: int = 0,
    *,
    data_dir: str | Path | None = None,
    batch_size: int | None = None,
    checkpoint: str = "best",
) -> Path:
    """Analyse `samples` rows of `split` (the same seeded choice as `capture_run`, 0 = all) of an ID-row run and
    write the analysis folder `out_dir` atomically."""
    bundle = load_run(run_dir, checkpoint=checkpoint)
    if bundle.cfg.model == "ctrsink":
        raise CtrSinkError(f"{run_dir} is a CTR-Sink run; use `sinkviz capture` (capture_run) for it")
    data_dir = data_dir or bundle.info["data_dir"]
    frame = choose_samples(_split_frame(data_dir, split), samples, seed)
    if frame.empty:
        raise CtrSinkError(f"split {split!r} of {data_dir} has no samples to analyse")
    rows = frame.to_dict("records")
    others = other_items([int(r["item_idx"]) for r in rows], len(bundle.batcher.item_cat), seed)
    boundary_gaps = max(bundle.cfg.sparsectr.chunks - 1, 0)
    bs = batch_size or bundle.cfg.eval_batch_size
    analysis, predictions = analyse_id_rows(bundle, rows, others, bs, boundary_gaps)
    tables = analysis.tables()
    tables["predictions"] = predictions
    tables["lambdas"] = lambda_table(bundle.model)
    cfg = bundle.cfg
    manifest = {
        "kind": ID_KIND,
        "schema_version": ID_SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": cfg.model,
        "run_dir": str(Path(run_dir).absolute()),
        "data_dir": str(Path(data_dir).absolute()),
        "split": split,
        "samples": len(rows),
        "seed": seed,
        "checkpoint": checkpoint,
        "other_candidate": "uniform random other item per sample (seeded), same history",
        "hook_names": sorted(analysis.seen),
        "modules": list(
            with_series(tables["distributions"][["module", "layer"]].drop_duplicates())["series"]
        ),
        "id_model": dict(cfg.id_model.__dict__),  # dim, layers, heads of the row (DIN uses dim only)
        "max_behaviors": int(bundle.batcher.max_len),
        "time_buckets": int(bundle.batcher.n_buckets),
        "boundary_gaps": boundary_gaps,
        "ctrsink_version": ctrsink.__version__,
    }
    return write_id_analysis(out_dir, manifest, tables)


# ------------------------------------------------------------------------------------------------ artifacts


def write_id_analysis(
    out_dir: str | Path, manifest: Mapping[str, Any], tables: Mapping[str, pd.DataFrame]
) -> Path:
    """Write the folder atomically: every table of `ID_TABLE_COLUMNS` as Parquet, then the manifest."""
    missing = [k for k in ID_MANIFEST_KEYS if k not in manifest]
    if missing:
        raise ValueError(f"ID-row analysis manifest lacks {', '.join(missing)}")
    absent = sorted(set(ID_TABLE_COLUMNS) - set(tables))
    unknown = sorted(set(tables) - set(ID_TABLE_COLUMNS))
    if absent or unknown:
        raise ValueError(f"ID-row analysis tables: missing {absent}, unknown {unknown}")
    for name, frame in tables.items():
        _check_columns(name, frame, schema=ID_TABLE_COLUMNS)
    files = {name: f"{name}.parquet" for name in ID_TABLE_COLUMNS}
    record = dict(manifest, tables=files)
    with atomic_dir(out_dir) as tmp:
        for name, frame in tables.items():
            frame.reset_index(drop=True).to_parquet(tmp / files[name], index=False)
        (tmp / MANIFEST).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return Path(out_dir)


@dataclass
class IDAnalysis:
    """A loaded ID-row analysis folder (tables as in `sinkviz.artifacts.ID_TABLE_COLUMNS`)."""

    path: Path
    manifest: dict[str, Any]
    predictions: pd.DataFrame
    distributions: pd.DataFrame
    conditioning: pd.DataFrame
    gap_mass: pd.DataFrame
    chunk_mass: pd.DataFrame
    gates: pd.DataFrame
    lambdas: pd.DataFrame

    def __getitem__(self, name: str) -> pd.DataFrame:
        if name not in ID_TABLE_COLUMNS:
            raise KeyError(name)
        return getattr(self, name)


def read_id_manifest(path: str | Path) -> dict[str, Any]:
    folder = Path(path)
    file = folder / MANIFEST
    if not file.is_file():
        raise AnalysisError(
            f"{folder} is not an ID-row analysis folder (no {MANIFEST}); create one with "
            "`sinkviz capture --run ID_RUN --out DIR`"
        )
    try:
        record = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise AnalysisError(f"{file}: not valid JSON: {exc}") from None
    if not isinstance(record, dict) or record.get("kind") != ID_KIND:
        kind = record.get("kind") if isinstance(record, dict) else None
        raise AnalysisError(f"{file}: not an ID-row analysis manifest (kind {kind!r}, expected {ID_KIND!r})")
    if record.get("schema_version") != ID_SCHEMA_VERSION:
        raise AnalysisError(
            f"{file}: ID-row analysis schema version {record.get('schema_version')!r} is not readable by this "
            f"sinkviz (reads {ID_SCHEMA_VERSION}); re-run `sinkviz capture` on the run"
        )
    return record


def load_id_analysis(path: str | Path) -> IDAnalysis:
    """Read an ID-row analysis folder; errors name the file that is missing or broken."""
    folder = Path(path)
    record = read_id_manifest(folder)
    tables = {}
    for name in ID_TABLE_COLUMNS:
        file = folder / f"{name}.parquet"
        if not file.is_file():
            raise AnalysisError(f"{file}: missing table {name!r} of the ID-row analysis")
        try:
            frame = pd.read_parquet(file)
        except Exception as exc:  # pyarrow raises several types for damaged files
            raise AnalysisError(f"{file}: unreadable Parquet ({type(exc).__name__}: {exc})") from None
        _check_columns(name, frame, file, schema=ID_TABLE_COLUMNS)
        tables[name] = frame
    return IDAnalysis(folder, record, **tables)


# ------------------------------------------------------------------------------------------------ summaries


def _order(frame: pd.DataFrame) -> pd.DataFrame:
    rank = {m: i for i, m in enumerate(MODULE_ORDER)}
    key = frame["module"].map(lambda m: rank.get(m, len(rank)))
    return frame.assign(_o=key).sort_values(["_o", "layer"]).drop(columns="_o").reset_index(drop=True)


def with_series(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with a `series` column ('cross L0', 'din') in display order."""
    out = _order(frame)
    return out.assign(series=[series_label(m, int(x)) for m, x in zip(out["module"], out["layer"])])


def gap_profile(analysis: IDAnalysis, candidate: str = "true") -> pd.DataFrame:
    """Mean candidate mass per log time-gap bucket against the uniform expectation (`ratio` = mass / uniform)."""
    t = analysis.gap_mass[analysis.gap_mass["candidate"] == candidate]
    with np.errstate(invalid="ignore", divide="ignore"):
        t = t.assign(ratio=t["mass"] / t["uniform"])
    return with_series(t).sort_values(["series", "bucket"], kind="stable").reset_index(drop=True)


def branch_shares(gates: pd.DataFrame, value: str = "share", candidate: str = "true") -> pd.DataFrame:
    """Mean gate (`value` = gate or share) per layer and branch: overall ("all") and by whether the candidate's
    category is new to the history or recurring."""
    t = gates[gates["candidate"] == candidate]
    parts = [t.assign(cat_status="all"), t]
    both = pd.concat(parts, ignore_index=True)
    out = both.groupby(["layer", "branch", "cat_status"], as_index=False).agg(
        value=(value, "mean"), rows=(value, "size")
    )
    return out.rename(columns={"value": value})


def conditioning_summary(conditioning: pd.DataFrame) -> pd.DataFrame:
    """JS divergence between the two candidates per module: mean, median, rows."""
    if conditioning.empty:
        return pd.DataFrame(columns=["module", "layer", "series", "js_mean", "js_median", "rows"])
    out = conditioning.groupby(["module", "layer"], as_index=False).agg(
        js_mean=("js", "mean"), js_median=("js", "median"), rows=("js", "size")
    )
    return with_series(out)


def distribution_summary(distributions: pd.DataFrame, candidate: str = "true") -> pd.DataFrame:
    """Per module: mean entropy, normalised entropy, keys for 90%, boundary mass vs its expectation, top-3 overlap
    with the candidate's category vs the category's share of the history."""
    t = distributions[distributions["candidate"] == candidate]
    cols = [
        "entropy",
        "entropy_norm",
        "keys90",
        "n_keys",
        "boundary_mass",
        "boundary_expected",
        "top3_same_cat",
        "same_cat_share",
        "outside_mass",
        "negative_mass",
    ]
    if t.empty:
        return pd.DataFrame(columns=["module", "layer", "series", *cols, "rows"])
    out = t.groupby(["module", "layer"], as_index=False)[cols].mean()
    out["rows"] = t.groupby(["module", "layer"]).size().to_numpy()
    return with_series(out)

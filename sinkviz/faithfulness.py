"""Faithfulness of per-behavior explanations: delete what an explanation ranks highest and see what the score
does.

Explanations, each a score per (sample, history field, behavior):
- `attention`: raw head-mean attention of the last token-level layer from the pooled tokens
  (`sinkviz.rollout`);
- `rollout`: attention rollout through the token-level layers (`sinkviz.rollout`);
- `integrated_gradients`: captum Layer IG summed over the behavior's tokens (`sinkviz.attribution`);
- `occlusion`: f(x) - f(x without the behavior) (`sinkviz.attribution`).
Behaviors are ranked by |score| (attention has no sign; for IG and occlusion a large negative contribution is
as much a reason as a large positive one), ties by behavior index.

Per (sample, history field) with n behaviors and k = 1 .. min(n - 1, max_k), in logit units:
- comprehensiveness(k) = |f(x) - f(x without the top k)|: high = the explanation found what the score rests
  on;
- sufficiency(k) = |f(x) - f(x with only the top k)|: low = the top k alone carry the score;
- `random`: the same with k behaviors chosen at random (mean over `random_draws` seeded draws per sample).
Deleting behaviors is `sinkviz.attribution.occlusion`'s removal (content and the joint after it, through the
attention mask, the sink signal and the roles), applied to the union of the chosen behaviors' positions.
Curves are means over (sample, field) with the user bootstrap of `sinkviz.studies.user_mean_interval`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pandas as pd
import torch

from ctrsink.model import CTRModel
from ctrsink.run import ModelBundle
from sinkviz import attribution
from sinkviz.attribution import Removal, attribute_rows, occlusion, removals
from sinkviz.rollout import rollout_study
from sinkviz.studies import TABLE_COLUMNS, Study, open_study, user_mean_interval, write_tables

METHODS = ("attention", "rollout", "integrated_gradients", "occlusion")
RANDOM = "random"
MEASURES = ("comprehensiveness", "sufficiency")


# ----------------------------------------------------------------------------------------------- explanations


def explanations(
    study: Study,
    rollout_table: pd.DataFrame | None = None,
    *,
    n_steps: int = 16,
    internal_batch_size: int = 32,
) -> pd.DataFrame:
    """sample_id, field, behavior, method, score for the four explanations of every history behavior."""
    model: CTRModel = study.model
    table = rollout_study(study) if rollout_table is None else rollout_table
    last = table[table["layer"] == model.split_at - 1]
    frames = [
        last.assign(method=m, score=last[col])[list(TABLE_COLUMNS["explanations"])]
        for m, col in (("attention", "raw"), ("rollout", "rollout"))
    ]
    attr = attribute_rows(
        model,
        study.batcher,
        study.rows,
        n_steps=n_steps,
        batch_size=study.batch_size,
        internal_batch_size=internal_batch_size,
        pooling=study.pooling,
    ).behaviors
    attr = attr[attr["field"].isin(model.history_fields) & (attr["behavior"] >= 0)]
    summed = attr.groupby(["sample_id", "field", "behavior", "method"], as_index=False)["attr_sum"].sum()
    frames.append(summed.rename(columns={"attr_sum": "score"}))
    out = pd.concat(frames, ignore_index=True)[list(TABLE_COLUMNS["explanations"])]
    return out.astype({"sample_id": "int64", "behavior": "int64", "score": "float64"})


# ------------------------------------------------------------------------------------------------ deletion


@contextlib.contextmanager
def _jobs(jobs: list[Removal]) -> Iterator[None]:
    """`attribution.occlusion` applies exactly `jobs` inside the block (its removal code, not a copy of
    it)."""
    with mock.patch.object(attribution, "removals", lambda model, fields: jobs):
        yield


def delete(
    model: CTRModel,
    fields: Mapping[str, Any],
    jobs: list[Removal],
    pooling: str,
    internal_batch_size: int = 32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (f(x) per batch row, f(x without the job's positions) per job)."""
    with _jobs(jobs):
        _, full, occluded = occlusion(model, fields, internal_batch_size=internal_batch_size, pooling=pooling)
    return full, occluded


def ranking(scores: Mapping[int, float], behaviors: Sequence[int]) -> list[int]:
    """Behaviors by |score|, highest first; ties (and unscored behaviors, scored 0) by index."""
    return sorted(behaviors, key=lambda j: (-abs(float(scores.get(j, 0.0))), j))


def _plans(
    scores: Mapping[str, Mapping[int, float]],
    behaviors: list[int],
    max_k: int,
    draws: int,
    key: list[int],
) -> list[tuple[str, int, int, frozenset, frozenset]]:
    """(method, draw, k, deleted for comprehensiveness, deleted for sufficiency) of one (sample, field)."""
    ks = range(1, min(len(behaviors) - 1, max_k) + 1)
    out = []
    for method, s in scores.items():
        order = ranking(s, behaviors)
        out += [(method, 0, k, frozenset(order[:k]), frozenset(order[k:])) for k in ks]
    for d in range(draws):
        order = [int(j) for j in np.random.default_rng([*key, d]).permutation(behaviors)]
        out += [(RANDOM, d, k, frozenset(order[:k]), frozenset(order[k:])) for k in ks]
    return out


def deletion_batch(
    model: CTRModel,
    batch: Mapping[str, Any],
    scores: Mapping[tuple[int, str], Mapping[str, Mapping[int, float]]],
    *,
    pooling: str,
    max_k: int = 5,
    random_draws: int = 3,
    seed: int = 0,
    internal_batch_size: int = 32,
) -> list[dict[str, Any]]:
    """Per (sample, history field, method, draw, k): comprehensiveness and sufficiency of one batch."""
    fields, sids = batch["fields"], batch["sample_id"].tolist()
    spans: dict[tuple[int, str], dict[int, torch.Tensor]] = {}
    for job in removals(model, fields):
        spans.setdefault((job.row, job.field), {})[job.behavior] = job.positions
    history = list(model.history_fields)
    plans, unique = [], {}
    for (row, f), beh in spans.items():
        key = [seed, int(sids[row]), history.index(f)]
        for method, d, k, comp, suff in _plans(scores.get((int(sids[row]), f), {}), sorted(beh), max_k,
                                               random_draws, key):  # fmt: skip
            plans.append((row, f, method, d, k, len(beh), comp, suff))
            for chosen in (comp, suff):
                if (row, f, chosen) not in unique:
                    positions = torch.cat([beh[j] for j in sorted(chosen)]).unique()
                    unique[(row, f, chosen)] = (len(unique), Removal(row, f, -1, positions))
    jobs = [job for _, job in sorted(unique.values(), key=lambda x: x[0])]
    full, occluded = delete(model, fields, jobs, pooling, internal_batch_size)
    out = []
    for row, f, method, d, k, n, comp, suff in plans:
        base = float(full[row])
        c, s = (float(occluded[unique[(row, f, x)][0]]) for x in (comp, suff))
        out.append(dict(row=row, sample_id=int(sids[row]), field=f, method=method, draw=d, k=k, n_behaviors=n,
                        comprehensiveness=abs(base - c), sufficiency=abs(base - s)))  # fmt: skip
    return out


def deletion_study(
    study: Study,
    explained: pd.DataFrame,
    *,
    max_k: int = 5,
    random_draws: int = 3,
    seed: int = 0,
    internal_batch_size: int = 32,
) -> pd.DataFrame:
    """One row per (sample, history field, method, k); `random` averaged over its draws."""
    scores: dict[tuple[int, str], dict[str, dict[int, float]]] = {}
    for (sid, f, method), part in explained.groupby(["sample_id", "field", "method"]):
        scores.setdefault((int(sid), str(f)), {})[str(method)] = dict(zip(part["behavior"], part["score"]))
    users = {int(r["sample_id"]): str(r["user_id"]) for r in study.rows}
    rows = []
    for batch in study.batches():
        rows += deletion_batch(
            study.model,
            batch,
            scores,
            pooling=study.pooling,
            max_k=max_k,
            random_draws=random_draws,
            seed=seed,
            internal_batch_size=internal_batch_size,
        )
    cols = list(TABLE_COLUMNS["deletion"])
    if not rows:
        return pd.DataFrame(columns=cols)
    frame = pd.DataFrame(rows)
    keys = ["sample_id", "field", "method", "k", "n_behaviors"]
    frame = frame.groupby(keys, as_index=False)[list(MEASURES)].mean()  # averages random's draws
    frame["user_id"] = frame["sample_id"].map(users)
    return frame[cols].astype({"sample_id": "int64", "k": "int64", "n_behaviors": "int64"})


def curves(deletion: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Mean comprehensiveness and sufficiency per (method, k), with a 95% bootstrap interval over users."""
    rows = []
    for (method, k), part in deletion.groupby(["method", "k"]):
        for measure in MEASURES:
            mean, lo, hi = user_mean_interval(
                part[measure].to_numpy(), part["user_id"].to_numpy(), n_boot, seed
            )
            rows.append((method, int(k), measure, mean, lo, hi, len(part)))
    return pd.DataFrame(rows, columns=list(TABLE_COLUMNS["deletion_curves"]))


def faithfulness_study(
    study: Study,
    *,
    max_k: int = 5,
    random_draws: int = 3,
    n_steps: int = 16,
    n_boot: int = 1000,
    seed: int = 0,
    internal_batch_size: int = 32,
) -> dict[str, pd.DataFrame]:
    """-> rollout, explanations, deletion (per sample) and deletion_curves tables."""
    table = rollout_study(study)
    explained = explanations(study, table, n_steps=n_steps, internal_batch_size=internal_batch_size)
    deletion = deletion_study(
        study,
        explained,
        max_k=max_k,
        random_draws=random_draws,
        seed=seed,
        internal_batch_size=internal_batch_size,
    )
    return {
        "rollout": table,
        "explanations": explained,
        "deletion": deletion,
        "deletion_curves": curves(deletion, n_boot, seed),
    }


def faithfulness_curves(
    run_or_bundle: str | Path | ModelBundle,
    split: str = "test",
    samples: int = 64,
    out: str | Path | None = None,
    *,
    max_k: int = 5,
    random_draws: int = 3,
    n_steps: int = 16,
    n_boot: int = 1000,
    seed: int = 0,
    **options: Any,
) -> pd.DataFrame:
    """Deletion curves of the four explanations on the seeded choice of `samples` rows of `split`; every table
    is written to `out` when given. `options`: data_dir, checkpoint, batch_size (as `open_study`)."""
    study = open_study(run_or_bundle, split, samples, seed=seed, **options)
    tables = faithfulness_study(
        study, max_k=max_k, random_draws=random_draws, n_steps=n_steps, n_boot=n_boot, seed=seed
    )
    if out is not None:
        params = dict(max_k=max_k, random_draws=random_draws, n_steps=n_steps, n_boot=n_boot)
        write_tables(out, "faithfulness", study, tables, **params)
    return tables["deletion_curves"]

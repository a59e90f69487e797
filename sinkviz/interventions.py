"""Interventions: score the same samples with one component taken away at inference, and measure what changes.

Every intervention patches the model or the batch for one scoring pass only (context managers and forward
hooks; nothing of the training code changes, and everything is put back when the block ends, also on errors):

- `sinks_removed`: the batch re-rendered without sink tokens, with the very behaviors the run kept (the
  sink-less text has room for more: the kept list is forced, so only the sinks differ);
- `signal_none` / `signal_shuffled`: every sink signal id set to bucket 0 (the `none` signal), or permuted
  across the carrying positions of each sample and history field (seeded per sample and field);
- `inter_sink_off`: lambda = 0 in one inter-sink bias layer (layer -1: all of them);
- `block_sink_keys` / `block_separator_keys`: in one lower layer (-1: all), no query may attend to a sink (or
  separator) token: its key column gets the mask's minimum, so softmax gives it exactly zero;
- `head_mean`: one head's output (the input slice of the attention output projection) replaced at every real
  position by that head's mean over all real positions of the same field and layer over the studied samples.

Each is reported as Δ = metric(intervened) - metric(unchanged) for AUC, gAUC and LogLoss, and the mean
|Δ score| (score = sigmoid(logit)), each with the 95% paired percentile bootstrap over users of
`ctrsink.intervals` (the same user resamples for every column).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import operator
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.special import expit
from torch import nn

from ctrsink.intervals import METRICS, paired_user_bootstrap
from ctrsink.metrics import ctr_metrics
from ctrsink.model import CTRModel
from ctrsink.run import ModelBundle
from ctrsink.text import ROLE_ID
from sinkviz.studies import Study, open_study, score_batches, user_mean_interval, write_tables

log = logging.getLogger("sinkviz.interventions")
Fields = Mapping[str, Mapping[str, torch.Tensor]]
# where the attention output projection sits inside a layer: its input holds the heads side by side
OUT_PROJ = {
    "bert": "attention.output.dense",
    "roberta": "attention.output.dense",
    "qwen2": "self_attn.o_proj",
    "qwen3": "self_attn.o_proj",
}
KINDS = (
    "sinks_removed",
    "signal_none",
    "signal_shuffled",
    "inter_sink_off",
    "block_sink_keys",
    "block_separator_keys",
    "head_mean",
)


@dataclasses.dataclass(frozen=True)
class Intervention:
    kind: str
    layer: int = -1  # -1: every layer it applies to (or none)
    head: int = -1

    @property
    def name(self) -> str:
        where = "" if self.layer < 0 else f"@L{self.layer}" + ("" if self.head < 0 else f"H{self.head}")
        return self.kind + (where or ("@all" if self.kind not in KINDS[:3] else ""))


@dataclasses.dataclass
class BatchRef:
    """The fields of the batch being scored, for hooks that need token roles (set before every forward)."""

    fields: Fields = dataclasses.field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ batches


def sinkless_batcher(batcher: Any) -> Any:
    """A copy of `batcher` rendering no sink tokens and keeping exactly the behaviors `batcher` keeps."""
    renderer = copy.copy(batcher.renderer)
    renderer.sink_id = None
    out = copy.copy(batcher)
    out.renderer = renderer
    out.cfg = dataclasses.replace(batcher.cfg, use_sink=False)
    choose = batcher.select

    def select(row: dict[str, Any], field: str) -> tuple[np.ndarray, np.ndarray | None]:
        return np.asarray(row[f"_kept_{field}"], dtype=np.int64), choose(row, field)[1]

    out.select = select

    def collate(rows: list[dict[str, Any]]) -> dict[str, Any]:
        forced = []
        for r in rows:
            enc = batcher.encode(r)["enc"]
            forced.append({**r, **{f"_kept_{f}": enc[f].kept for f in renderer.history_fields}})
        return type(batcher).__call__(out, forced)

    return collate


def _with_signal(fields: Fields, change: Callable[[str, torch.Tensor], torch.Tensor]) -> dict[str, Any]:
    out = {}
    for f, t in fields.items():
        t = dict(t)
        if "sink_signal_ids" in t:
            t["sink_signal_ids"] = change(f, t["sink_signal_ids"].clone())
        out[f] = t
    return out


def signal_none(fields: Fields) -> dict[str, Any]:
    """Every carrying position gets bucket 0: what `sink_signal_ids('none')` gives."""
    return _with_signal(fields, lambda f, ids: torch.where(ids >= 0, torch.zeros_like(ids), ids))


def signal_shuffled(
    fields: Fields, sample_ids: torch.Tensor, history: list[str], seed: int
) -> dict[str, Any]:
    """Signal ids permuted across the carrying positions of each sample and history field."""

    def change(field: str, ids: torch.Tensor) -> torch.Tensor:
        stream = history.index(field) if field in history else 0
        for b, sid in enumerate(sample_ids.tolist()):
            pos = (ids[b] >= 0).nonzero().flatten()
            perm = np.random.default_rng([seed, int(sid), stream]).permutation(len(pos))
            ids[b, pos] = ids[b, pos[torch.as_tensor(perm, dtype=torch.long)]]
        return ids

    return _with_signal(fields, change)


# ---------------------------------------------------------------------------------------------- model patches


@contextlib.contextmanager
def inter_sink_off(model: CTRModel, layers: list[int] | None = None) -> Iterator[None]:
    """lambda = 0 in the inter-sink bias of `layers` (None: all) for the block; the bias is then exactly 0."""
    keys = [k for k in model.inter_sink if layers is None or int(k) in layers]
    saved = {k: model.inter_sink[k].inter_sink_lambda.detach().clone() for k in keys}
    try:
        with torch.no_grad():
            for k in keys:
                model.inter_sink[k].inter_sink_lambda.zero_()
        yield
    finally:
        with torch.no_grad():
            for k, v in saved.items():
                model.inter_sink[k].inter_sink_lambda.copy_(v)


@contextlib.contextmanager
def _hooks(register: list[Callable[[], Any]]) -> Iterator[None]:
    handles = []
    try:
        handles = [r() for r in register]
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def block_keys(model: CTRModel, ref: BatchRef, role: str, layers: list[int] | None = None) -> Iterator[None]:
    """No query attends to keys of `role` in `layers` (None: all lower layers) of the token-level passes."""
    role_id = ROLE_ID[role]
    chosen = range(model.split_at) if layers is None else layers

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        fields = ref.fields
        if model.current_field not in fields:  # the upper pass over pooled field vectors has no roles
            return None
        roles = fields[model.current_field]["token_roles"]
        mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        if mask is None or mask.shape[-1] != roles.shape[1]:
            return None
        blocked = (roles == role_id)[:, None, None, :].to(mask.device)
        mask = mask.masked_fill(blocked, torch.finfo(mask.dtype).min)
        if "attention_mask" in kwargs:
            return args, {**kwargs, "attention_mask": mask}
        return (args[0], mask, *args[2:]), kwargs

    layer_list = model.backbone.layers
    with _hooks(
        [lambda i=i: layer_list[i].register_forward_pre_hook(hook, with_kwargs=True) for i in chosen]
    ):
        yield


def out_projections(model: CTRModel) -> list[nn.Module]:
    path = OUT_PROJ.get(model.backbone.model_type)
    if path is None:
        raise ValueError(f"no head ablation for model_type {model.backbone.model_type!r}")
    return [operator.attrgetter(path)(layer) for layer in model.backbone.layers]


def _valid(ref: BatchRef, field: str | None, x: torch.Tensor) -> torch.Tensor:
    """(B, T, 1) real positions of the running pass (all positions in the upper pass over field vectors)."""
    if field in ref.fields and ref.fields[field]["attention_mask"].shape[1] == x.shape[1]:
        return ref.fields[field]["attention_mask"].bool().to(x.device)[..., None]
    return torch.ones(*x.shape[:2], 1, dtype=torch.bool, device=x.device)


@torch.no_grad()
def head_means(model: CTRModel, study: Study, ref: BatchRef) -> dict[tuple[str, int], torch.Tensor]:
    """{(field, layer): mean over real positions of the heads' outputs, (H * d,)} over the study's batches."""
    sums: dict[tuple[str, int], list] = {}

    def make(layer: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple) -> None:
            x, field = args[0], str(model.current_field)
            valid = _valid(ref, model.current_field, x)
            acc = sums.setdefault((field, layer), [0.0, 0.0])
            acc[0] = acc[0] + (x * valid).sum((0, 1)).double()
            acc[1] += float(valid.sum())

        return hook

    projs = out_projections(model)
    with _hooks([lambda i=i, p=p: p.register_forward_pre_hook(make(i)) for i, p in enumerate(projs)]):
        _score(model, study, study.batches(), ref)
    return {k: (s / max(n, 1.0)).float() for k, (s, n) in sums.items()}


@contextlib.contextmanager
def mean_ablate_head(
    model: CTRModel, ref: BatchRef, layer: int, head: int, means: Mapping[tuple[str, int], torch.Tensor]
) -> Iterator[None]:
    """Head `head` of `layer` outputs its mean (per field) at every real position for the block."""
    n_heads = int(model.backbone.config.num_attention_heads)

    def hook(module: nn.Module, args: tuple) -> tuple:
        x, field = args[0], str(model.current_field)
        d = x.shape[-1] // n_heads
        mean = means.get((field, layer))
        if mean is None:
            return args
        cols = slice(head * d, (head + 1) * d)
        x = x.clone()
        x[..., cols] = torch.where(_valid(ref, model.current_field, x), mean[cols].to(x.dtype), x[..., cols])
        return (x, *args[1:])

    proj = out_projections(model)[layer]
    with _hooks([lambda: proj.register_forward_pre_hook(hook)]):
        yield


# ------------------------------------------------------------------------------------------------ running


def _score(
    model: CTRModel,
    study: Study,
    batches: list[dict[str, Any]],
    ref: BatchRef,
    transform: Callable[[dict[str, Any]], Fields] | None = None,
) -> np.ndarray:
    """Logits over `batches`; `ref` holds each batch's fields while that batch runs (the hooks read it)."""
    out = []
    try:
        for b in batches:
            ref.fields = transform(b) if transform else b["fields"]
            out.append(score_batches(model, [{"fields": ref.fields}], study.pooling))
    finally:
        ref.fields = {}
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def plan(model: CTRModel, heads: bool = True, kinds: list[str] | None = None) -> list[Intervention]:
    """The interventions that apply to `model`: text and signal ones always (no-ops say so), per layer and
    all."""
    wanted = set(kinds or KINDS)
    unknown = sorted(wanted - set(KINDS))
    if unknown:
        raise ValueError(f"unknown intervention kind(s) {unknown}; known: {', '.join(KINDS)}")
    out = [Intervention(k) for k in KINDS[:3]]
    bias_layers = sorted(int(k) for k in model.inter_sink)
    out += [Intervention("inter_sink_off", i) for i in bias_layers]
    out += [Intervention("inter_sink_off")] if len(bias_layers) > 1 else []
    for kind in ("block_sink_keys", "block_separator_keys"):
        out += [Intervention(kind, i) for i in range(model.split_at)]
        out += [Intervention(kind)] if model.split_at > 1 else []
    if heads:
        n_heads = int(model.backbone.config.num_attention_heads)
        out += [
            Intervention("head_mean", i, h) for i in range(model.backbone.num_layers) for h in range(n_heads)
        ]
    return [i for i in out if i.kind in wanted]


def _note(model: CTRModel, iv: Intervention) -> str:
    if iv.kind in ("sinks_removed", "block_sink_keys") and not model.cfg.use_sink:
        return "no-op: the run has no sink tokens"
    if iv.kind.startswith("signal_") and model.signal is None:
        return "no-op: the run has no sink signal"
    return ""


def score_intervention(
    study: Study, iv: Intervention, ref: BatchRef, means: Mapping | None = None
) -> np.ndarray:
    """Logits of the study's samples with `iv` applied."""
    model, layers = study.model, None if iv.layer < 0 else [iv.layer]
    batches = study.batches()
    if iv.kind == "sinks_removed":
        plain = sinkless_batcher(study.batcher)
        return _score(model, study, [plain(rows) for rows in study.chunks()], ref)
    if iv.kind == "signal_none":
        return _score(model, study, batches, ref, lambda b: signal_none(b["fields"]))
    if iv.kind == "signal_shuffled":
        seed = int(study.meta.get("sample_seed", 0))

        def shuffle(b: dict[str, Any]) -> Fields:
            return signal_shuffled(b["fields"], b["sample_id"], list(model.history_fields), seed)

        return _score(model, study, batches, ref, shuffle)
    if iv.kind == "inter_sink_off":
        ctx: Any = inter_sink_off(model, layers)
    elif iv.kind in ("block_sink_keys", "block_separator_keys"):
        ctx = block_keys(model, ref, iv.kind.split("_")[1], layers)
    elif iv.kind == "head_mean":
        ctx = mean_ablate_head(model, ref, iv.layer, iv.head, means or {})
    else:
        raise ValueError(iv.kind)
    with ctx:
        return _score(model, study, batches, ref)


def summarise(
    study: Study, iv: Intervention, base: pd.DataFrame, logits: np.ndarray, n_boot: int, seed: int
) -> dict[str, Any]:
    """One table row: Δ and interval of each metric, paired over users with the unchanged scores."""
    pred = study.predictions(logits)
    row: dict[str, Any] = {"intervention": iv.name, "kind": iv.kind, "layer": iv.layer, "head": iv.head}
    row.update(n=len(pred), note=_note(study.model, iv))
    for m in METRICS:
        row.update(
            zip((f"delta_{m}", f"lo_{m}", f"hi_{m}"), paired_user_bootstrap(pred, base, m, n_boot, seed))
        )
    change = np.abs(expit(pred["logit"].to_numpy()) - expit(base["logit"].to_numpy()))
    stats = user_mean_interval(change, base["user_id"].to_numpy(), n_boot, seed)
    row.update(zip(("delta_abs_score", "lo_abs_score", "hi_abs_score"), stats))
    return row


def intervene_study(
    study: Study, *, heads: bool = True, kinds: list[str] | None = None, n_boot: int = 1000, seed: int = 0
) -> dict[str, pd.DataFrame]:
    """-> {"interventions": one row per intervention, "intervention_scores": every sample's logit under
    each}."""
    ref = BatchRef()
    todo = plan(study.model, heads, kinds)
    base_logits = _score(study.model, study, study.batches(), ref)
    base = study.predictions(base_logits)
    metrics = ctr_metrics(base["label"].to_numpy(), base_logits, base["user_id"].to_numpy())
    means = head_means(study.model, study, ref) if any(i.kind == "head_mean" for i in todo) else None
    rows, scores = [], [base.assign(intervention="none")]
    for n, iv in enumerate(todo, 1):
        logits = score_intervention(study, iv, ref, means)
        rows.append(summarise(study, iv, base, logits, n_boot, seed))
        scores.append(study.predictions(logits).assign(intervention=iv.name))
        log.info("intervention %d/%d %s", n, len(todo), iv.name)
    table = pd.DataFrame(rows).assign(**{f"base_{m}": metrics[m] for m in METRICS})
    table = table.astype({"layer": "int64", "head": "int64", "n": "int64"})
    score_table = pd.concat(scores, ignore_index=True)[["intervention", "sample_id", "logit"]]
    return {"interventions": table, "intervention_scores": score_table}


def intervene(
    run_or_bundle: str | Path | ModelBundle,
    split: str = "test",
    samples: int = 256,
    out: str | Path | None = None,
    *,
    data_dir: str | Path | None = None,
    seed: int = 0,
    checkpoint: str = "best",
    batch_size: int | None = None,
    heads: bool = True,
    kinds: list[str] | None = None,
    n_boot: int = 1000,
) -> pd.DataFrame:
    """Every intervention that applies to the run on `samples` rows of `split` (the seeded choice of `sinkviz
    capture`); -> the table, also written to `out` (with every sample's intervened logit) when given."""
    study = open_study(
        run_or_bundle,
        split,
        samples,
        data_dir=data_dir,
        seed=seed,
        checkpoint=checkpoint,
        batch_size=batch_size,
    )
    tables = intervene_study(study, heads=heads, kinds=kinds, n_boot=n_boot, seed=seed)
    if out is not None:
        write_tables(out, "intervene", study, tables, heads=heads, kinds=kinds or list(KINDS), n_boot=n_boot)
    return tables["interventions"]

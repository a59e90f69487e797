"""Attributions of the CTR logit to input tokens, summed per behavior, with a removal cross-check.

Layer Integrated Gradients (captum) runs on the per-token input embeddings. Two layers can be attributed:

- ``inputs_embeds`` (default): the final input rows, after the sink signal module has replaced the sink rows. The
  baseline sets every token but the special ones ([CLS]/[SEP]/EOS) to the pad token *and* drops the sink signal,
  so sink rows are credited for their token or signal embedding.
- ``word_embeddings``: the backbone's word embedding module (`model.backbone.word_embeddings()`). The signal module
  overwrites sink rows after it, so with a sink signal the sink rows get exactly zero (their signal is the same in
  input and baseline); without one it equals ``inputs_embeds``.

The CTR model embeds each field separately, so `FieldsLogit` lays all fields side by side in one (B, sum T_f)
tensor, looks them up with a single call (captum's layer hook must fire once per forward), splits them back and
feeds the rows to the unchanged model. Signed token attributions are summed per (field, role, behavior): content
and sink rows carry their behavior's index, separators the index of the behavior before them, prompt, special
and target tokens -1. The cross-check removes one behavior at a time (its content and the joint after it, or
before it for the last one) through the attention mask and reports f(x) - f(x without it).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from ctrsink.atomic import atomic_write_bytes, atomic_write_json
from ctrsink.errors import CtrSinkError
from ctrsink.model import CTRModel
from ctrsink.text import ROLE_ID, ROLES

log = logging.getLogger("sinkviz.attribution")

LAYERS = ("inputs_embeds", "word_embeddings")
BEHAVIORS_FILE = "attributions.parquet"
TOKENS_FILE = "attribution_tokens.parquet"
META_FILE = "attributions.json"
COLUMNS = (
    "sample_id",
    "field",
    "behavior",
    "role",
    "n_tokens",
    "attr_sum",
    "attr_abs",
    "method",
    "layer",
    "n_steps",
    "delta",
    "logit",
    "reference_logit",
)
DTYPES = {
    "sample_id": "int64",
    "behavior": "int64",
    "n_tokens": "int64",
    "attr_sum": "float64",
    "attr_abs": "float64",
    "n_steps": "int64",
    "delta": "float64",
    "logit": "float64",
    "reference_logit": "float64",
}
TOKEN_COLUMNS = ("sample_id", "field", "position", "token_id", "token", "role", "behavior", "attr")
_JOINT = (ROLE_ID["sink"], ROLE_ID["separator"])


# ------------------------------------------------------------------------------------------------ layout


@dataclass
class FlatFields:
    """All fields of a batch side by side along the token axis; `layout` is ((field, width), ...)."""

    layout: tuple[tuple[str, int], ...]
    input_ids: torch.Tensor
    sink_signal_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_roles: torch.Tensor
    behavior_index: torch.Tensor

    def split(self, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
        widths = [w for _, w in self.layout]
        return dict(zip([f for f, _ in self.layout], tensor.split(widths, dim=1)))


def flatten_fields(fields: Mapping[str, Mapping[str, torch.Tensor]], order: Sequence[str]) -> FlatFields:
    def cat(key: str, fill: int) -> torch.Tensor:
        parts = []
        for f in order:
            t = fields[f].get(key)
            parts.append(t if t is not None else torch.full_like(fields[f]["input_ids"], fill))
        return torch.cat(parts, dim=1)

    return FlatFields(
        layout=tuple((f, int(fields[f]["input_ids"].shape[1])) for f in order),
        input_ids=cat("input_ids", 0),
        sink_signal_ids=cat("sink_signal_ids", -1),
        attention_mask=cat("attention_mask", 0),
        token_roles=cat("token_roles", ROLE_ID["padding"]),
        behavior_index=cat("behavior_index", -1),
    )


def token_groups(roles: torch.Tensor, behavior: torch.Tensor) -> torch.Tensor:
    """(B, T) behavior index used for aggregation: separators take the index of the behavior or sink before them."""
    t = roles.shape[1]
    owned = (roles == ROLE_ID["behavior"]) | (roles == ROLE_ID["sink"])
    owned = owned & (behavior >= 0)
    pos = torch.where(owned, torch.arange(t).expand_as(roles), torch.full_like(roles, -1))
    last = pos.cummax(dim=1).values
    before = torch.where(last >= 0, behavior.gather(1, last.clamp(min=0)), torch.full_like(behavior, -1))
    return torch.where(roles == ROLE_ID["separator"], before, behavior)


def baseline_ids(input_ids: torch.Tensor, roles: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Pad ids everywhere except special tokens ([CLS]/[SEP]/EOS) and padding, which stay as they are."""
    keep = (roles == ROLE_ID["special"]) | (roles == ROLE_ID["padding"])
    return torch.where(keep, input_ids, torch.full_like(input_ids, pad_id))


# ------------------------------------------------------------------------------------------------ forward


class InputEmbeddings(nn.Module):
    """Final per-token input rows: the word lookup, then sink rows replaced by the sink signal (when the run has one)."""

    def __init__(self, model: CTRModel) -> None:
        super().__init__()
        self.word = model.backbone.word_embeddings()
        self.signal = model.signal

    def forward(self, input_ids: torch.Tensor, sink_signal_ids: torch.Tensor) -> torch.Tensor:
        embeds = self.word(input_ids)
        if self.signal is not None:
            embeds = self.signal(embeds, sink_signal_ids)  # -1 (no sink) rows are left as they are
        return embeds


class FieldsLogit(nn.Module):
    """The CTR logit as a function of all fields laid side by side: (B, sum T_f) tensors in, (B,) logits out."""

    def __init__(self, model: CTRModel, pooling: str = "all_tokens") -> None:
        super().__init__()
        self.model = model
        self.embeddings = InputEmbeddings(model)
        self.pooling = pooling

    def forward(
        self,
        input_ids: torch.Tensor,
        sink_signal_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_roles: torch.Tensor,
        layout: tuple[tuple[str, int], ...],
    ) -> torch.Tensor:
        embeds = self.embeddings(input_ids, sink_signal_ids)
        widths = [w for _, w in layout]
        names = [f for f, _ in layout]
        rows = dict(zip(names, embeds.split(widths, dim=1)))
        fields = {
            f: {
                "input_ids": ids,
                "attention_mask": mask,
                "token_roles": roles,
            }  # no signal ids: already applied
            for f, ids, mask, roles in zip(
                names,
                input_ids.split(widths, dim=1),
                attention_mask.split(widths, dim=1),
                token_roles.split(widths, dim=1),
            )
        }
        return self.model(fields, pooling=self.pooling, embeds=rows)


# ------------------------------------------------------------------------------------------------ methods


@dataclass
class TokenAttributions:
    """LIG result for one batch: per-token attributions over the flat layout, convergence delta per sample."""

    flat: FlatFields
    attr: torch.Tensor  # (B, sum T_f), summed over the hidden dimension
    delta: torch.Tensor  # (B,) sum(attr) - (f(x) - f(baseline))
    logit: torch.Tensor  # (B,) f(x)
    reference_logit: torch.Tensor  # (B,) f(baseline)
    layer: str
    n_steps: int


def integrated_gradients(
    model: CTRModel,
    fields: Mapping[str, Mapping[str, torch.Tensor]],
    pad_id: int,
    *,
    layer: str = "inputs_embeds",
    n_steps: int = 32,
    internal_batch_size: int | None = 32,
    pooling: str = "all_tokens",
    method: str = "gausslegendre",
) -> TokenAttributions:
    """Layer Integrated Gradients of the CTR logit on one batch (see the module docstring for layers/baseline).

    `pad_id` is the baseline token. A decoder whose pad row is all zeros (scratch Qwen: `padding_idx` rows start
    at zero and get no gradient) makes RMSNorm jump near the baseline and the delta large: pass another id.
    """
    from captum.attr import LayerIntegratedGradients

    if layer not in LAYERS:
        raise ValueError(f"layer must be one of {LAYERS}, got {layer!r}")
    model.eval()
    flat = flatten_fields(fields, model.fields)
    forward = FieldsLogit(model, pooling)
    target = forward.embeddings if layer == "inputs_embeds" else forward.embeddings.word
    _warn_zero_baseline(model, pad_id)
    base_ids = baseline_ids(flat.input_ids, flat.token_roles, pad_id)
    # inputs_embeds: the baseline has no sink signal either; word_embeddings: the signal is kept (not attributed)
    base_signal = (
        torch.full_like(flat.sink_signal_ids, -1) if layer == "inputs_embeds" else flat.sink_signal_ids
    )
    extra = (flat.attention_mask, flat.token_roles, flat.layout)
    lig = LayerIntegratedGradients(forward, target)
    attr, delta = lig.attribute(
        inputs=(flat.input_ids, flat.sink_signal_ids),
        baselines=(base_ids, base_signal),
        additional_forward_args=extra,
        n_steps=n_steps,
        method=method,
        internal_batch_size=internal_batch_size,
        return_convergence_delta=True,
    )
    with torch.no_grad():
        logit = forward(flat.input_ids, flat.sink_signal_ids, *extra)
        reference = forward(base_ids, base_signal, *extra)
    per_token = attr.sum(-1).detach() * flat.attention_mask.to(attr.dtype)
    return TokenAttributions(flat, per_token, delta.detach(), logit, reference, layer, n_steps)


def _warn_zero_baseline(model: CTRModel, token_id: int) -> None:
    row = model.backbone.word_embeddings().weight[token_id]
    if model.causal and float(row.detach().abs().max()) == 0.0:
        log.warning(
            "baseline token %d has an all-zero embedding: RMSNorm is stiff near it, expect a large convergence "
            "delta (choose another baseline token)",
            token_id,
        )


@dataclass(frozen=True)
class Removal:
    """One occlusion: drop `positions` of `field` in batch row `row` (behavior `behavior`)."""

    row: int
    field: str
    behavior: int
    positions: torch.Tensor


def removals(model: CTRModel, fields: Mapping[str, Mapping[str, torch.Tensor]]) -> list[Removal]:
    """Per sample and history field, one removal per kept behavior: its content and the joint after it (the
    last behavior takes the joint before it), so the remaining text reads like a history without it."""
    out = []
    for f in model.history_fields:
        roles, beh = fields[f]["token_roles"], fields[f]["behavior_index"]
        groups = token_groups(roles, beh)
        content = roles == ROLE_ID["behavior"]
        joint = (roles == _JOINT[0]) | (roles == _JOINT[1])
        for b in range(roles.shape[0]):
            present = beh[b][content[b]]
            if present.numel() == 0:
                continue
            last = int(present.max())
            for k in range(last + 1):
                drop = (groups[b] == k) & (content[b] | joint[b])
                if k == last and k > 0:
                    drop |= (groups[b] == k - 1) & joint[b]
                if content[b][groups[b] == k].any():
                    out.append(Removal(b, f, k, drop.nonzero().flatten()))
    return out


@torch.no_grad()
def occlusion(
    model: CTRModel,
    fields: Mapping[str, Mapping[str, torch.Tensor]],
    *,
    internal_batch_size: int = 32,
    pooling: str = "all_tokens",
) -> tuple[list[Removal], torch.Tensor, torch.Tensor]:
    """-> (removals, f(x) per batch row, f(x without the behavior) per removal), in chunks of internal_batch_size."""
    model.eval()
    full = model(fields, pooling=pooling)
    jobs = removals(model, fields)
    outs = []
    for start in range(0, len(jobs), max(1, internal_batch_size)):
        chunk = jobs[start : start + internal_batch_size]
        index = torch.tensor([j.row for j in chunk])
        batch = {f: {k: v[index].clone() for k, v in t.items()} for f, t in fields.items()}
        for i, job in enumerate(chunk):
            t = batch[job.field]
            t["attention_mask"][i, job.positions] = 0
            t["token_roles"][i, job.positions] = ROLE_ID[
                "padding"
            ]  # also out of sink pooling and inter-sink bias
            t["behavior_index"][i, job.positions] = -1
            if "sink_signal_ids" in t:
                t["sink_signal_ids"][i, job.positions] = -1
        outs.append(model(batch, pooling=pooling))
    occluded = torch.cat(outs) if outs else torch.zeros(0)
    return jobs, full, occluded


# ------------------------------------------------------------------------------------------------ tables


def token_table(result: TokenAttributions, sample_ids: Sequence[int], tokenizer: Any = None) -> pd.DataFrame:
    """One row per real token: sample_id, field, position, token_id, token, role, behavior (aggregation index), attr."""
    flat = result.flat
    groups = flat.split(token_groups(flat.token_roles, flat.behavior_index))
    ids, roles, mask = (
        flat.split(flat.input_ids),
        flat.split(flat.token_roles),
        flat.split(flat.attention_mask),
    )
    attr = flat.split(result.attr.float())
    frames = []
    for f, _ in flat.layout:
        b, pos = mask[f].bool().nonzero(as_tuple=True)
        if b.numel() == 0:
            continue
        tok_ids = ids[f][b, pos].tolist()
        frames.append(
            pd.DataFrame(
                {
                    "sample_id": np.asarray(sample_ids, dtype=np.int64)[b.numpy()],
                    "field": f,
                    "position": pos.numpy(),
                    "token_id": tok_ids,
                    "token": tokenizer.convert_ids_to_tokens(tok_ids) if tokenizer is not None else "",
                    "role": [ROLES[r] for r in roles[f][b, pos].tolist()],
                    "behavior": groups[f][b, pos].numpy(),
                    "attr": attr[f][b, pos].numpy().astype(np.float64),
                }
            )
        )
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(TOKEN_COLUMNS))


def behavior_table(
    tokens: pd.DataFrame, result: TokenAttributions, sample_ids: Sequence[int]
) -> pd.DataFrame:
    """Token attributions summed per (sample, field, behavior, role), with the sample's delta and logits."""
    grouped = (
        tokens.assign(attr_abs=tokens["attr"].abs())
        .groupby(["sample_id", "field", "behavior", "role"], sort=False)
        .agg(n_tokens=("attr", "size"), attr_sum=("attr", "sum"), attr_abs=("attr_abs", "sum"))
        .reset_index()
    )
    row = {int(s): i for i, s in enumerate(sample_ids)}
    idx = grouped["sample_id"].map(row).to_numpy(dtype=np.int64)
    grouped["method"] = "integrated_gradients"
    grouped["layer"] = result.layer
    grouped["n_steps"] = result.n_steps
    grouped["delta"] = result.delta.double().numpy()[idx]
    grouped["logit"] = result.logit.double().numpy()[idx]
    grouped["reference_logit"] = result.reference_logit.double().numpy()[idx]
    return grouped[list(COLUMNS)].astype(DTYPES)


def occlusion_table(
    jobs: Sequence[Removal], full: torch.Tensor, occluded: torch.Tensor, sample_ids: Sequence[int]
) -> pd.DataFrame:
    effect = (full[[j.row for j in jobs]] - occluded).double().numpy() if jobs else np.zeros(0)
    return pd.DataFrame(
        {
            "sample_id": [int(sample_ids[j.row]) for j in jobs],
            "field": [j.field for j in jobs],
            "behavior": [j.behavior for j in jobs],
            "role": "behavior",
            "n_tokens": [int(j.positions.numel()) for j in jobs],
            "attr_sum": effect,
            "attr_abs": np.abs(effect),
            "method": "occlusion",
            "layer": "attention_mask",
            "n_steps": 1,
            "delta": np.nan,
            "logit": [float(full[j.row]) for j in jobs],
            "reference_logit": occluded.double().numpy() if jobs else np.zeros(0),
        },
        columns=list(COLUMNS),
    ).astype(DTYPES)


@dataclass
class Attributions:
    """Tidy results: `behaviors` (COLUMNS; integrated gradients and occlusion rows) and per-token `tokens`."""

    behaviors: pd.DataFrame
    tokens: pd.DataFrame


def attribute_rows(
    model: CTRModel,
    batcher: Any,
    rows: Sequence[Mapping[str, Any]],
    *,
    layer: str = "inputs_embeds",
    n_steps: int = 32,
    batch_size: int = 8,
    internal_batch_size: int | None = 32,
    occlude: bool = True,
    pooling: str = "all_tokens",
    method: str = "gausslegendre",
    baseline_token: int | None = None,
) -> Attributions:
    """Attribute the logit of every row: integrated gradients per token and behavior, plus occlusion per behavior.

    `batch_size` rows are attributed together; `internal_batch_size` caps how many interpolated (or occluded)
    copies go through the model in one forward pass (memory grows with it, not with n_steps). The baseline token
    is the pad token unless `baseline_token` is given.
    """
    tokenizer = getattr(getattr(batcher, "renderer", None), "tok", None)
    pad_id = int(batcher.pad_id if baseline_token is None else baseline_token)
    behaviors, tokens = [], []
    for start in range(0, len(rows), batch_size):
        batch = batcher(list(rows[start : start + batch_size]))
        sids = batch["sample_id"].tolist()
        result = integrated_gradients(
            model,
            batch["fields"],
            pad_id,
            layer=layer,
            n_steps=n_steps,
            internal_batch_size=internal_batch_size,
            pooling=pooling,
            method=method,
        )
        tok = token_table(result, sids, tokenizer)
        tokens.append(tok)
        behaviors.append(behavior_table(tok, result, sids))
        if occlude:
            jobs, full, occluded = occlusion(
                model, batch["fields"], internal_batch_size=internal_batch_size or 32, pooling=pooling
            )
            behaviors.append(occlusion_table(jobs, full, occluded, sids))
        log.info("attributed %d/%d samples", min(start + batch_size, len(rows)), len(rows))
    return Attributions(
        pd.concat(behaviors, ignore_index=True) if behaviors else pd.DataFrame(columns=list(COLUMNS)),
        pd.concat(tokens, ignore_index=True) if tokens else pd.DataFrame(columns=list(TOKEN_COLUMNS)),
    )


# ------------------------------------------------------------------------------------------------ files


def write_attributions(out_dir: str | Path, result: Attributions, meta: Mapping[str, Any]) -> Path:
    """`attributions.parquet`, `attribution_tokens.parquet` and `attributions.json`, each written atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / BEHAVIORS_FILE, result.behaviors.to_parquet(index=False))
    atomic_write_bytes(out / TOKENS_FILE, result.tokens.to_parquet(index=False))
    atomic_write_json(out / META_FILE, dict(meta))
    return out / BEHAVIORS_FILE


def load_attributions(path: str | Path) -> pd.DataFrame:
    """The per-behavior table from a folder (or the Parquet file itself); checks the columns."""
    path = Path(path)
    file = path / BEHAVIORS_FILE if path.is_dir() else path
    if not file.is_file():
        raise CtrSinkError(f"no attribution table at {file}; create one with `sinkviz attribute`")
    frame = pd.read_parquet(file)
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise CtrSinkError(f"{file}: attribution table lacks column(s) {', '.join(missing)}")
    return frame


def attribute_run(
    run_dir: str | Path,
    data_dir: str | Path | None,
    split: str,
    samples: int,
    out_dir: str | Path,
    *,
    layer: str = "inputs_embeds",
    n_steps: int = 32,
    batch_size: int = 8,
    internal_batch_size: int | None = 32,
    occlude: bool = True,
    seed: int = 0,
    checkpoint: str = "best",
    pooling: str = "all_tokens",
    baseline_token: int | None = None,
) -> Path:
    """Attribute `samples` rows of `split` of a trained run (the same seeded choice as `sinkviz capture`)."""
    from ctrsink.run import load_run
    from sinkviz.capture import _split_frame, choose_samples

    bundle = load_run(run_dir, checkpoint=checkpoint)
    data_dir = data_dir or bundle.info["data_dir"]
    frame = choose_samples(_split_frame(data_dir, split), samples, seed)
    if frame.empty:
        raise CtrSinkError(f"split {split!r} of {data_dir} has no samples to attribute")
    result = attribute_rows(
        bundle.model,
        bundle.batcher,
        frame.to_dict("records"),
        layer=layer,
        n_steps=n_steps,
        batch_size=batch_size,
        internal_batch_size=internal_batch_size,
        occlude=occlude,
        pooling=pooling,
        baseline_token=baseline_token,
    )
    lig = result.behaviors[result.behaviors["method"] == "integrated_gradients"]
    deltas = lig.drop_duplicates("sample_id")["delta"].abs()
    meta = {
        "run_dir": str(Path(run_dir).absolute()),
        "data_dir": str(Path(data_dir).absolute()),
        "split": split,
        "samples": len(frame),
        "sample_seed": seed,
        "checkpoint": checkpoint,
        "pooling": pooling,
        "layer": layer,
        "n_steps": n_steps,
        "baseline_token": int(bundle.batcher.pad_id if baseline_token is None else baseline_token),
        "baseline": "baseline token everywhere but special tokens and padding"
        + (", no sink signal" if layer == "inputs_embeds" else ", sink signal kept"),
        "max_abs_delta": float(deltas.max()) if len(deltas) else None,
    }
    log.info("max |convergence delta| %s", json.dumps(meta["max_abs_delta"]))
    return write_attributions(out_dir, result, meta)

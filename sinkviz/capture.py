"""Wire the reducers to captured patterns (`AttentionAnalysis`), and turn a trained run into an analysis folder:
load it, run samples of a split under capture, write the artifacts."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

import ctrsink
from ctrsink.errors import CtrSinkError
from ctrsink.model import CTRModel
from ctrsink.run import ModelBundle, load_run
from ctrsink.text import ROLES
from sinkviz.artifacts import make_manifest, write_analysis
from sinkviz.hooks import AttentionEvent, capture
from sinkviz.reduce import (
    ANCHORS,
    Affinity,
    AnchorMatrix,
    BehaviorMap,
    Entropy,
    FieldBatch,
    RoleMass,
    SinkMetric,
)

log = logging.getLogger("sinkviz.capture")
SPLITS = ("train", "valid", "test")
UPPER_FIELD = "fields"  # CTRModel.current_field during the upper pass over pooled field vectors
PLAIN_FIELD = "input"  # the field name of a plain transformers model (no current_field)


class AttentionAnalysis:
    """Every reduction at once; pass it as the `callback` of `sinkviz.hooks.capture`.

    Call `set_batch(batch["fields"], sample_ids)` before each forward so the reducers know each token's role.
    History fields get all reductions; other fields get role mass and entropy; the upper pass ("fields") entropy.
    """

    def __init__(
        self,
        history_fields: Collection[str],
        causal: bool,
        anchor: str = "sink",
        eps: Sequence[float] = (0.3,),
        full_map_samples: Iterable[int] = (),
    ) -> None:
        if anchor not in ANCHORS:
            raise ValueError(f"anchor must be one of {ANCHORS}, got {anchor!r}")
        self.history_fields = set(history_fields)
        self.causal = causal
        self.anchor = anchor
        self.role_mass = RoleMass()
        self.entropy = Entropy()
        self.inter_anchor = AnchorMatrix(anchor)
        self.affinity = Affinity()
        self.behavior_map = BehaviorMap()
        self.sink_metric = SinkMetric(anchor, eps)
        self.full_map_samples = {int(s) for s in full_map_samples}
        self.full_maps: dict[tuple[int, str, int], np.ndarray] = {}  # (sample, field, layer) -> (H, T, T)
        self.tokens: dict[tuple[int, str], dict[str, np.ndarray]] = {}  # (sample, field) -> per-token facts
        self.heads: tuple[int, ...] | None = None
        self._batch: dict[str, FieldBatch] = {}
        self._fields: Mapping[str, Mapping[str, torch.Tensor]] = {}
        self._sample_ids = torch.zeros(0, dtype=torch.long)

    def set_batch(
        self, fields: Mapping[str, Mapping[str, torch.Tensor]], sample_ids: Sequence[int] | torch.Tensor
    ) -> None:
        self._fields = fields
        self._sample_ids = torch.as_tensor(sample_ids).cpu()
        self._batch = {}

    def field_batch(self, field: str | None, batch: int, length: int) -> tuple[str, FieldBatch]:
        if field is None and len(self._fields) == 1:  # a plain model: the one input is the field
            field = next(iter(self._fields))
        if field in self._fields:
            if field not in self._batch:
                self._batch[field] = FieldBatch.from_field(self._fields[field], self._sample_ids)
            return field, self._batch[field]
        # the upper pass over pooled field vectors (or a plain model without set_batch): no roles, no padding
        return field or PLAIN_FIELD, FieldBatch.dense(batch, length, self._sample_ids)

    def __call__(self, event: AttentionEvent) -> None:
        self.update(event.field, event.layer, event.pattern, event.heads)

    def update(self, field: str | None, layer: int, pattern: torch.Tensor, heads: Sequence[int]) -> None:
        if self.heads is None:
            self.heads = tuple(heads)
        elif tuple(heads) != self.heads:  # tables label heads once for all layers
            raise ValueError(
                f"AttentionAnalysis needs the same heads at every layer: {self.heads} vs {tuple(heads)}"
            )
        pattern = pattern.float().cpu()
        field, fb = self.field_batch(field, pattern.shape[0], pattern.shape[-1])
        token_level = field in self._fields
        if token_level:
            self.role_mass.update(field, layer, pattern, fb)
        self.entropy.update(field, layer, pattern, fb, self.causal)
        if field in self.history_fields:
            self.inter_anchor.update(field, layer, pattern, fb)
            self.behavior_map.update(field, layer, pattern, fb)
            self.sink_metric.update(field, layer, pattern, fb, self.causal)
        self._keep_full(field, layer, pattern, fb, token_level)

    def add_affinity(self, field: str, layer: int, affinity: torch.Tensor | None) -> bool:
        """Accumulate an inter-sink bias module's `last_affinity` for the current batch's `field`."""
        if affinity is None or field not in self._fields:
            return False
        _, fb = self.field_batch(field, 0, 0)
        return self.affinity.update(field, layer, affinity.float(), fb)

    def _keep_full(
        self, field: str, layer: int, pattern: torch.Tensor, fb: FieldBatch, token_level: bool
    ) -> None:
        for b, sid in enumerate(fb.sample_ids.tolist()):
            if sid not in self.full_map_samples:
                continue
            n = int(fb.valid[b].sum())  # right padding: valid tokens are a prefix
            self.full_maps[(sid, field, layer)] = pattern[b, :, :n, :n].numpy().copy()
            if token_level and (sid, field) not in self.tokens:
                src = self._fields[field]
                self.tokens[(sid, field)] = {
                    "token_id": src["input_ids"][b, :n].cpu().numpy(),
                    "role": fb.roles[b, :n].numpy(),
                    "behavior_index": fb.behavior[b, :n].numpy(),
                }

    # ------------------------------------------------------------------------------------------ results
    def tables(self) -> dict[str, pd.DataFrame]:
        return {
            "role_mass": self.role_mass.table(self.heads),
            "entropy": self.entropy.table(self.heads),
            "sink_metric": self.sink_metric.table(self.heads),
            "behavior_map": self.behavior_map.table(self.heads),
            "inter_sink": self.inter_anchor.table(self.heads),
        }

    def matrices(self, num_layers: int) -> dict[str, np.ndarray]:
        """Sums and counts stacked over layers: `{kind}/{field}/sum` (L, H, K, K) and `/count` (L, K, K)."""
        out: dict[str, np.ndarray] = {}
        for kind, reducer in (
            ("inter_sink", self.inter_anchor),
            ("behavior_map", self.behavior_map),
            ("affinity", self.affinity),
        ):
            for field, (sums, counts) in reducer.stacked(num_layers).items():
                out[f"{kind}/{field}/sum"] = sums
                out[f"{kind}/{field}/count"] = counts
        return out


def anchor_for(model: CTRModel) -> str:
    """Sinks where the run has them; otherwise separators stand in their place."""
    return "sink" if model.cfg.use_sink else "separator"


def model_callback(model: CTRModel, analysis: AttentionAnalysis) -> Callable[[AttentionEvent], None]:
    """A capture callback feeding `analysis`, plus the inter-sink bias modules' affinity where they ran."""

    def on_pattern(event: AttentionEvent) -> None:
        analysis(event)
        key = str(event.layer)
        if key in model.inter_sink and event.field in model.history_fields:
            # the bias module ran just before this layer's attention, so its affinity belongs to this field
            analysis.add_affinity(event.field, event.layer, model.inter_sink[key].last_affinity)

    return on_pattern


def choose_samples(frame: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """A seeded choice of n rows kept in split order (all rows when n <= 0): the same seed and data give the
    same samples for every run, so a baseline and a CTR-Sink run are analysed on identical inputs."""
    if n <= 0 or n >= len(frame):
        return frame.reset_index(drop=True)
    keep = np.sort(np.random.default_rng(seed).choice(len(frame), size=n, replace=False))
    return frame.iloc[keep].reset_index(drop=True)


def _split_frame(data_dir: str | Path, split: str) -> pd.DataFrame:
    from ctrsink.data import load_sample_set

    if split not in SPLITS:
        raise CtrSinkError(f"option '--split': {split!r} is not one of {', '.join(SPLITS)}")
    table = load_sample_set(data_dir).splits[split]
    return table.to_pandas() if hasattr(table, "to_pandas") else table


def analyse_rows(
    bundle: ModelBundle,
    rows: list[dict[str, Any]],
    batch_size: int,
    full_maps: Sequence[int] = (),
    eps: Sequence[float] = (0.3,),
    pooling: str = "all_tokens",
) -> tuple[AttentionAnalysis, np.ndarray]:
    """Run rows through the model under capture; -> (filled reductions, logits)."""
    model = bundle.model
    analysis = AttentionAnalysis(model.history_fields, model.causal, anchor_for(model), eps, full_maps)
    logits = []
    model.eval()  # attention dropout would make the captured patterns random
    with torch.no_grad(), capture(model, callback=model_callback(model, analysis)):
        for start in range(0, len(rows), batch_size):
            batch = bundle.batcher(rows[start : start + batch_size])
            analysis.set_batch(batch["fields"], batch["sample_id"])
            logits.append(model(batch["fields"], pooling=pooling).float().cpu().numpy())
            log.info("captured %d/%d samples", min(start + batch_size, len(rows)), len(rows))
    return analysis, (np.concatenate(logits) if logits else np.zeros(0, dtype=np.float32))


def token_table(analysis: AttentionAnalysis, tokenizer: Any) -> pd.DataFrame:
    rows = []
    for (sid, fld), facts in sorted(analysis.tokens.items()):
        tokens = tokenizer.convert_ids_to_tokens(facts["token_id"].tolist())
        for pos, (tid, tok, role, beh) in enumerate(
            zip(facts["token_id"], tokens, facts["role"], facts["behavior_index"])
        ):
            rows.append((sid, fld, pos, int(tid), str(tok), ROLES[int(role)], int(beh)))
    return pd.DataFrame(
        rows, columns=["sample_id", "field", "position", "token_id", "token", "role", "behavior_index"]
    )


def kept_table(batcher: Any, rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Per sample, history field and kept behavior k: the stored-history index the model read (`FieldEncoding.kept`).

    The batcher's own selection (recent or by similarity, then truncation to the token budget) decides it, so
    readers map behavior k to the stored history without re-deriving the selection rule.
    """
    out = []
    for row in rows:
        encodings = batcher.encode(dict(row))["enc"]
        for fld in batcher.renderer.history_fields:
            out += [(int(row["sample_id"]), fld, k, int(j)) for k, j in enumerate(encodings[fld].kept)]
    frame = pd.DataFrame(out, columns=["sample_id", "field", "behavior", "stored_index"])
    return frame.astype({"sample_id": "int64", "behavior": "int64", "stored_index": "int64"})


def capture_run(
    run_dir: str | Path,
    data_dir: str | Path | None,
    split: str,
    samples: int,
    out_dir: str | Path,
    batch_size: int | None = None,
    full_maps: int = 4,
    *,
    eps: Sequence[float] = (0.3,),
    seed: int = 0,
    checkpoint: str = "best",
    pooling: str | None = None,
) -> Path:
    """Analyse `samples` rows of `split` (seeded choice, 0 = all) of a run; write the analysis folder `out_dir`.

    Full token-level maps are kept for the first `full_maps` analysed samples.
    """
    bundle = load_run(run_dir, checkpoint=checkpoint)
    pooling = pooling or bundle.cfg.eval_pooling  # the pooling the run was selected and tested with
    data_dir = data_dir or bundle.info["data_dir"]
    frame = choose_samples(_split_frame(data_dir, split), samples, seed)
    if frame.empty:
        raise CtrSinkError(f"split {split!r} of {data_dir} has no samples to analyse")
    rows = frame.to_dict("records")
    chosen = [int(r["sample_id"]) for r in rows[: max(full_maps, 0)]]
    bs = batch_size or bundle.cfg.eval_batch_size
    analysis, logits = analyse_rows(bundle, rows, bs, chosen, eps, pooling)

    model, backbone = bundle.model, bundle.model.backbone
    tables = analysis.tables()
    tables["tokens"] = token_table(analysis, bundle.tokenizer)
    tables["kept"] = kept_table(bundle.batcher, rows)
    tables["predictions"] = pd.DataFrame(
        {
            "sample_id": frame["sample_id"].to_numpy(),
            "user_id": frame["user_id"].astype(str).to_numpy(),
            "label": frame["label"].to_numpy(),
            "logit": logits,
        }
    )
    record = make_manifest(
        run_dir=str(Path(run_dir).absolute()),
        data_dir=str(Path(data_dir).absolute()),
        split=split,
        samples=len(rows),
        sample_seed=seed,
        checkpoint=checkpoint,
        pooling=pooling,
        model_family=backbone.spec.family,
        model_type=backbone.model_type,
        backbone=bundle.cfg.backbone,
        layers=backbone.num_layers,
        lower_layers=model.split_at,  # layers that see tokens; the rest see pooled field vectors
        heads=int(backbone.config.num_attention_heads),
        roles=list(ROLES),
        fields=list(model.fields),
        history_fields=list(model.history_fields),
        upper_field=UPPER_FIELD,  # field name of the upper pass over pooled field vectors
        anchor=analysis.anchor,
        eps=list(analysis.sink_metric.eps),
        use_sink=bool(bundle.cfg.use_sink),
        inter_sink_layers=sorted(int(k) for k in model.inter_sink),
        full_map_samples=chosen,
        ctrsink_version=ctrsink.__version__,
    )
    return write_analysis(out_dir, record, tables, analysis.matrices(backbone.num_layers), analysis.full_maps)

"""Ranking mode: many candidate items for one user at one moment, the user encoded once.

A request (one JSON object per line for `ctrsink rank`, the body of `POST /rank` for `ctrsink serve`):

    {"request_id": "r1",            optional, echoed back
     "user_id": "u7",               optional, "" by default (the ID rows hash it into their fold groups)
     "at": 1716000000,              Unix seconds of the moment to rank for; every behavior must be earlier
     "history": [{"item_id": "12", "timestamp": 1715990000, "label": 1}, ...],   any order, label 0 or 1
     "candidates": ["3", "99", ...],
     "sample_id": 0}                optional: the seed of `sink_signal=random` (a stored sample's id reproduces it)

Each candidate is scored as the sample row the data pipeline would have built for (user, candidate, at): the
history sorted by time, split into the run's history fields (`pos`/`neg` by label, or `all`), each cut to the
sample set's `max_history` most recent behaviors; `Ranker.rows(request)` returns those rows, so scores can be
checked against `score_rows`/`ctrsink predict`.

Reuse, for `model=ctrsink`: `CTRModel` encodes every field separately (lower layers, or all layers when
`split_layer=false`) and pools it; only the upper layers and the head see fields together. A history field's
encoding depends on the candidate only through similarity (`behavior_selection=similarity` picks behaviors per
candidate, `sink_signal=similarity` gives per-candidate sink signals), so otherwise the history fields pass the
backbone once per request and the item fields once per item (bounded LRU cache of pooled vectors); per candidate
only the upper layers and the head run. With similarity the ranker says so (log line, `reuse_note`) and scores
every candidate as its own sample. The ID rows score a request's candidates in one batch: SparseCTR-lite and
SRP4CTR-lite fold rows sharing a user and history, so their user side runs once per request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from ctrsink.backbones import additive_mask
from ctrsink.errors import CtrSinkError
from ctrsink.model import CTRModel
from ctrsink.run import ModelBundle, load_run, score_rows

log = logging.getLogger("ctrsink.rank")
DEFAULT_CACHE_ITEMS = 20_000  # pooled item-field vectors kept (MiniLM: 2 x 384 floats, about 3 KB per item)


def _id_text(value: Any) -> Any:
    # ids are strings in the sample set; JSON clients often send numbers
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


ItemId = Annotated[str, BeforeValidator(_id_text), Field(min_length=1, max_length=256)]


class Behavior(BaseModel):
    model_config = ConfigDict(extra="forbid")
    item_id: ItemId
    timestamp: int
    label: int = Field(ge=0, le=1)


class RankRequest(BaseModel):
    """One user at one moment and the items to rank (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")
    request_id: str | None = None
    user_id: Annotated[str, BeforeValidator(_id_text), Field(max_length=256)] = ""
    at: int
    history: list[Behavior] = Field(default_factory=list)
    candidates: list[ItemId] = Field(min_length=1)
    sample_id: int = 0


class RankRequestError(CtrSinkError):
    """A request the run cannot score (unknown item, history not before `at`, too short a history)."""


def _names(values: Iterable[str], limit: int = 5) -> str:
    values = sorted(set(values))
    return ", ".join(values[:limit]) + (f" ... ({len(values)} in all)" if len(values) > limit else "")


@dataclass
class Ranking:
    """Scores of one request's candidates, in the request's order (`ranked()` sorts them)."""

    request_id: str | None
    user_id: str
    item_ids: list[str]
    logits: np.ndarray

    @property
    def scores(self) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.logits.astype(np.float64)))

    def ranked(self) -> list[tuple[str, float, float]]:
        """(item_id, score, logit), best first; ties keep the request's order."""
        order = np.argsort(-self.logits, kind="stable")
        scores = self.scores
        return [(self.item_ids[i], float(scores[i]), float(self.logits[i])) for i in order]

    def to_dict(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "user_id": self.user_id,
            "ranking": [{"item_id": i, "score": s, "logit": g} for i, s, g in self.ranked()],
        }


def reuse_blocker(bundle: ModelBundle) -> str | None:
    """Why candidates cannot share the user-side computation, or None when they can."""
    cfg = bundle.cfg
    if cfg.model != "ctrsink":
        if getattr(bundle.model, "folds", False) and getattr(bundle.model, "fold", False):
            return None
        return (
            f"{cfg.model} has no candidate-independent user side to fold; candidates are scored in one batch"
        )
    if cfg.behavior_selection == "similarity":
        return "behavior_selection=similarity picks each candidate's own behaviors; each candidate is its own sample"
    if cfg.sink_signal == "similarity":
        return "sink_signal=similarity gives each candidate its own sink signals; each candidate is its own sample"
    return None


def upper_logits(model: CTRModel, pooled: torch.Tensor) -> torch.Tensor:
    """`CTRModel.forward` after the per-field passes: pooled fields (N, F, H) -> logits (N,).

    Kept step for step with the model's forward (the equality tests in tests/test_rank.py guard it).
    """
    bb, z = model.backbone, pooled
    if model.split_at < bb.num_layers:
        model.current_field = "fields"
        ones = torch.ones(pooled.shape[:2], dtype=torch.long, device=pooled.device)
        mask = additive_mask(ones, model.causal, pooled.dtype)
        rope = bb.position_embeddings(pooled)
        for i in range(model.split_at, bb.num_layers):
            z = bb.run_layer(i, z, mask, rope)
        z = bb.final_norm(z)
    model.current_field = None
    proj = torch.cat([model.heads[f](z[:, j]) for j, f in enumerate(model.fields)], dim=-1)
    return model.ctr(model.fusion(proj)).squeeze(-1)


class Ranker:
    """Scores requests with a loaded run; `Ranker.from_run(run_dir).rank(history, candidates, at=...)`.

    Thread-safe (one lock around scoring): the service's worker thread and direct calls may share an instance.
    """

    def __init__(
        self,
        bundle: ModelBundle,
        item_ids: Sequence[str],
        *,
        max_history: int | None = None,
        min_history: int = 0,
        cache_items: int = DEFAULT_CACHE_ITEMS,
        pooling: str | None = None,
    ) -> None:
        self.bundle = bundle
        self.model = bundle.model.eval()
        self.item_ids = [str(i) for i in item_ids]
        self.item_index = {item: i for i, item in enumerate(self.item_ids)}
        self.history_fields = list(bundle.info["history_fields"])
        self.max_history = max_history
        self.min_history = min_history
        self.pooling = pooling or bundle.cfg.eval_pooling
        self.batch_size = bundle.cfg.eval_batch_size
        self.cache_items = cache_items
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()  # item_idx -> (item fields, H)
        self._lock = threading.Lock()
        self.reuse_note = reuse_blocker(bundle)
        self.reuse = self.reuse_note is None
        self.encodes_once = self.reuse and bundle.cfg.model == "ctrsink"
        if self.reuse_note:
            log.warning("ranking without reuse: %s", self.reuse_note)

    @classmethod
    def from_run(cls, run_dir: str | Path, checkpoint: str = "best", **kwargs: Any) -> Ranker:
        """Load a run and the item ids, `max_history` and `min_history` of the sample set it was trained on."""
        import pyarrow.parquet as pq

        from ctrsink.data.manifest import ITEMS_FILE, read_manifest

        bundle = load_run(run_dir, checkpoint)
        data_dir = Path(bundle.info["data_dir"])
        manifest = read_manifest(data_dir)
        items = pq.read_table(data_dir / ITEMS_FILE, columns=["item_idx", "item_id"]).to_pydict()
        if items["item_idx"] != list(range(len(items["item_idx"]))):
            raise CtrSinkError(f"{data_dir / ITEMS_FILE}: item_idx is not 0..n-1 in order")
        kwargs.setdefault("max_history", manifest.get("max_history"))
        kwargs.setdefault("min_history", int(manifest.get("min_history", 0)))
        return cls(bundle, items["item_id"], **kwargs)

    # ---------------------------------------------------------------------------------------- requests
    def request(
        self,
        history: Sequence[dict[str, Any] | Behavior],
        candidates: Sequence[str],
        at: int | None = None,
        user_id: str = "",
        sample_id: int = 0,
    ) -> RankRequest:
        """A validated request; `at` defaults to now."""
        values = {
            "user_id": user_id,
            "at": int(time.time()) if at is None else at,
            "history": [b.model_dump() if isinstance(b, Behavior) else b for b in history],
            "candidates": list(candidates),
            "sample_id": sample_id,
        }
        try:
            return RankRequest.model_validate(values)
        except ValidationError as exc:
            raise RankRequestError(validation_message(exc)) from None

    def check(self, req: RankRequest) -> None:
        """Raise RankRequestError for what the run cannot score."""
        unknown = [b.item_id for b in req.history if b.item_id not in self.item_index]
        unknown += [c for c in req.candidates if c not in self.item_index]
        if unknown:
            raise RankRequestError(f"unknown item id(s): {_names(unknown)}")
        late = [b for b in req.history if b.timestamp >= req.at]
        if late:
            raise RankRequestError(
                f"history must be strictly before at={req.at}: {len(late)} behavior(s) are not"
                f" (first: item {late[0].item_id} at {late[0].timestamp})"
            )
        if len(req.history) < self.min_history:
            raise RankRequestError(
                f"history has {len(req.history)} behavior(s); the run was trained on samples with at least"
                f" {self.min_history}"
            )

    def base_row(self, req: RankRequest) -> dict[str, Any]:
        """The sample row of `req` without its target item (the history fields, time, ids)."""
        hist = sorted(req.history, key=lambda b: b.timestamp)  # stable: ties keep the request's order
        row: dict[str, Any] = {
            "sample_id": req.sample_id,
            "user_id": req.user_id,
            "timestamp": req.at,
            "label": 0,
            "feedback": 0.0,
            "user_code": -1,
        }
        for f in self.history_fields:
            kept = [b for b in hist if f == "all" or b.label == (1 if f == "pos" else 0)]
            kept = kept[-self.max_history :] if self.max_history else kept
            row[f"{f}_item_idx"] = [self.item_index[b.item_id] for b in kept]
            row[f"{f}_timestamp"] = [b.timestamp for b in kept]
            row[f"{f}_label"] = [b.label for b in kept]
        return row

    def rows(self, req: RankRequest) -> list[dict[str, Any]]:
        """One sample row per candidate: what `score_rows` would score one by one."""
        self.check(req)
        base = self.base_row(req)
        return [{**base, "item_idx": self.item_index[c]} for c in req.candidates]

    # ----------------------------------------------------------------------------------------- scoring
    def rank(
        self,
        history: Sequence[dict[str, Any] | Behavior],
        candidates: Sequence[str],
        at: int | None = None,
        user_id: str = "",
        sample_id: int = 0,
    ) -> Ranking:
        """Score `candidates` for a user with `history` at time `at` (Unix seconds, default now)."""
        return self.rank_many([self.request(history, candidates, at, user_id, sample_id)])[0]

    def rank_many(self, requests: Sequence[RankRequest]) -> list[Ranking]:
        """Score several requests together (the service's micro-batches); raises on the first invalid one."""
        for req in requests:
            self.check(req)
        if not requests:
            return []
        with self._lock, torch.no_grad():
            if self.encodes_once:
                logits = self._rank_encoded_once(requests)
            else:  # per request: ID rows fold rows of one user and history, whatever their `at`
                logits = [score_rows(self.bundle, self.rows(r), self.pooling) for r in requests]
        return [
            Ranking(r.request_id, r.user_id, list(r.candidates), np.asarray(g, dtype=np.float32))
            for r, g in zip(requests, logits)
        ]

    def _rank_encoded_once(self, requests: Sequence[RankRequest]) -> list[np.ndarray]:
        model: CTRModel = self.model  # type: ignore[assignment]
        bases = [self.base_row(r) for r in requests]
        # any candidate stands in for the target: without similarity the history encoding ignores it
        hist_rows = [{**b, "item_idx": self.item_index[r.candidates[0]]} for b, r in zip(bases, requests)]
        hist = self._encode(hist_rows, self.history_fields)  # (R, history fields, H)
        wanted = [self.item_index[c] for r in requests for c in r.candidates]
        items = self._item_vectors(wanted)  # (N, item fields, H)
        owner = torch.tensor([i for i, r in enumerate(requests) for _ in r.candidates])
        parts = {f: hist[owner, j] for j, f in enumerate(self.history_fields)}
        parts.update({f: items[:, j] for j, f in enumerate(self._item_fields())})
        pooled = torch.stack([parts[f] for f in model.fields], dim=1)
        logits = torch.cat([upper_logits(model, chunk) for chunk in pooled.split(4096)]).float().numpy()
        return np.split(logits, np.cumsum([len(r.candidates) for r in requests])[:-1])

    def _item_fields(self) -> list[str]:
        return [f for f in self.model.fields if f not in self.history_fields]

    def _encode(self, rows: list[dict[str, Any]], names: list[str]) -> torch.Tensor:
        """Pooled encodings (len(rows), len(names), H) of some fields of sample rows, batch by batch."""
        out = []
        for i in range(0, len(rows), self.batch_size):
            fields = self.bundle.batcher(rows[i : i + self.batch_size])["fields"]
            out.append(
                torch.stack([self.model.encode_field(f, fields[f], self.pooling) for f in names], dim=1)
            )
        self.model.current_field = None
        return torch.cat(out)

    def _item_vectors(self, wanted: list[int]) -> torch.Tensor:
        """(len(wanted), item fields, H): cached pooled item fields, the missing ones encoded in batches."""
        found = {i: self._cache[i] for i in dict.fromkeys(wanted) if i in self._cache}
        missing = [i for i in dict.fromkeys(wanted) if i not in found]
        if missing:
            empty = {"sample_id": 0, "user_id": "", "timestamp": 0, "label": 0, "user_code": -1}
            for f in self.history_fields:  # items only: an empty history is the cheapest to render
                empty.update({f"{f}_item_idx": [], f"{f}_timestamp": [], f"{f}_label": []})
            encoded = self._encode([{**empty, "item_idx": i} for i in missing], self._item_fields())
            found.update((i, e.clone()) for i, e in zip(missing, encoded))  # own storage: eviction frees it
        for i in dict.fromkeys(wanted):  # most recently used last; evict from the front
            self._cache[i] = found[i]
            self._cache.move_to_end(i)
        while len(self._cache) > self.cache_items:
            self._cache.popitem(last=False)
        return torch.stack([found[i] for i in wanted])

    def cache_info(self) -> dict[str, int]:
        return {"items": len(self._cache), "capacity": self.cache_items}


def validation_message(exc: ValidationError) -> str:
    """pydantic's errors as one line: 'candidates: List should have at least 1 item; at: Field required'."""
    return errors_message(exc.errors())


def errors_message(errors: Sequence[dict[str, Any]], limit: int = 5) -> str:
    """Error dicts (pydantic's, or FastAPI's whose locations start with 'body') as one line."""
    parts = []
    for err in errors[:limit]:
        loc = [str(p) for p in err.get("loc", ())]
        where = ".".join(loc[1:] if loc[:1] == ["body"] else loc) or "request"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    more = len(errors) - limit
    return "; ".join(parts) + (f"; ... ({more} more)" if more > 0 else "")


def read_requests(path: str | Path) -> list[RankRequest]:
    """Requests of a JSONL file (blank lines skipped); an invalid line is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise CtrSinkError(f"{path}: file not found")
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(RankRequest.model_validate_json(line))
        except ValidationError as exc:
            raise CtrSinkError(f"{path} line {n}: {validation_message(exc)}") from None
    return out


def rank_file(
    run_dir: str | Path, requests: str | Path, out: str | Path, chunk: int = 64, checkpoint: str = "best"
) -> int:
    """`ctrsink rank`: one JSON line per request (best candidate first) into `out`; returns the request count."""
    import json

    from ctrsink.atomic import atomic_write_text

    reqs = read_requests(requests)
    ranker = Ranker.from_run(run_dir, checkpoint)
    for n, req in enumerate(reqs, 1):  # every line checked before any scoring: one bad line, no output
        try:
            ranker.check(req)
        except RankRequestError as exc:
            raise CtrSinkError(f"{requests} request {n}: {exc}") from None
    lines = []
    for i in range(0, len(reqs), chunk):
        lines += [json.dumps(r.to_dict()) for r in ranker.rank_many(reqs[i : i + chunk])]
    atomic_write_text(Path(out), "".join(line + "\n" for line in lines))
    return len(reqs)

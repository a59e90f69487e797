"""The run directory: what a trained model leaves behind, and how to build a model back from it.

RUN_DIR/config.yaml            resolved config            RUN_DIR/run.json        data, backbone, versions, seed
RUN_DIR/backbone/config.json   backbone skeleton          RUN_DIR/tokenizer/      the tokenizer used (sink included)
RUN_DIR/metrics.jsonl          one row per epoch/split/pooling     RUN_DIR/final_metrics.json  test at best
RUN_DIR/checkpoint/best/model.safetensors     RUN_DIR/checkpoint/last/  model + optimizer + trainer state
ID rows (`model` != ctrsink) have no backbone/ or tokenizer/; SRP4CTR-lite may leave its pre-trained RUN_DIR/encoder/.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_model

from ctrsink.backbones import Backbone, backbone_from_run
from ctrsink.batches import Batcher
from ctrsink.config import Config, load_config
from ctrsink.errors import CtrSinkError
from ctrsink.idmodels.common import IDModel
from ctrsink.idview import IDBatcher
from ctrsink.model import CTRModel
from ctrsink.sinks.tokens import choose_sink_token, register_sink_token
from ctrsink.text import ITEM_FIELDS, TextRenderer

CHECKPOINT = "model.safetensors"


@dataclass
class ModelBundle:
    """Everything needed to score samples: model, batcher (renderer inside), config, run record."""

    model: CTRModel | IDModel
    batcher: Batcher | IDBatcher
    cfg: Config
    info: dict[str, Any]
    tokenizer: Any


def assemble(
    cfg: Config,
    backbone: Backbone,
    tokenizer: Any,
    items: pd.DataFrame,
    history_fields: list[str],
    item_vectors: np.ndarray | None = None,
) -> tuple[CTRModel, Batcher, dict[str, Any]]:
    """Sink token registration, renderer, batcher and model for one config."""
    info: dict[str, Any] = {}
    sink = None
    if cfg.use_sink:
        sink = choose_sink_token(tokenizer, cfg.sink_token, cfg.use_cls_token)
        sink_id, grew = register_sink_token(tokenizer, sink)
        if grew or len(tokenizer) > backbone.word_embeddings().num_embeddings:
            backbone.model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        info.update(sink_token=sink, sink_token_id=int(sink_id))
    renderer = TextRenderer(tokenizer, items, cfg, history_fields, sink_token=sink)
    batcher = Batcher(renderer, cfg, item_vectors)
    model = CTRModel(backbone, cfg, history_fields + list(ITEM_FIELDS), history_fields)
    return model, batcher, info


def assemble_ids(
    cfg: Config, items: pd.DataFrame, history_fields: list[str]
) -> tuple[IDModel, IDBatcher, dict[str, Any]]:
    """ID view and ID row for one config (`model` = din | sparsectr_lite | srp4ctr_lite)."""
    from ctrsink.idmodels.registry import build_id_model

    batcher = IDBatcher(items, cfg, history_fields)
    model = build_id_model(cfg, batcher.vocab)
    info = {"id_view": {"vocab": batcher.vocab.to_dict(), "max_behaviors": batcher.max_len}}
    return model, batcher, info


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CtrSinkError(f"missing file {path}")
    return json.loads(path.read_text(encoding="utf-8"))


def load_run(run_dir: str | Path, checkpoint: str = "best") -> ModelBundle:
    """Rebuild a trained model from its run directory (strict loading: every tensor must match)."""
    from ctrsink.data import load_sample_set

    run_dir = Path(run_dir)
    if not (run_dir / "run.json").is_file():
        raise CtrSinkError(f"{run_dir} is not a run directory (no run.json); train one with `ctrsink train`")
    info = read_json(run_dir / "run.json")
    cfg = load_config(run_dir / "config.yaml")
    weights = run_dir / "checkpoint" / checkpoint / CHECKPOINT
    if not weights.is_file():
        raise CtrSinkError(f"missing checkpoint {weights}")
    _, items, _ = load_sample_set(info["data_dir"])
    items = items.to_pandas() if hasattr(items, "to_pandas") else items
    if cfg.model != "ctrsink":
        id_model, id_batcher, _ = assemble_ids(cfg, items, info["history_fields"])
        load_model(id_model, str(weights), strict=True)
        id_model.eval()
        return ModelBundle(id_model, id_batcher, cfg, info, None)
    backbone, tokenizer = backbone_from_run(run_dir)
    vectors = (
        np.load(run_dir / "item_vectors.npy", allow_pickle=False)
        if (run_dir / "item_vectors.npy").is_file()
        else None
    )
    model, batcher, _ = assemble(cfg, backbone, tokenizer, items, info["history_fields"], vectors)
    load_model(model, str(weights), strict=True)
    model.eval()
    return ModelBundle(model, batcher, cfg, info, tokenizer)


@torch.no_grad()
def score_rows(
    bundle: ModelBundle,
    rows: list[dict[str, Any]],
    pooling: str = "all_tokens",
    batch_size: int | None = None,
) -> np.ndarray:
    """Logits for sample rows (dicts in the sample schema). The public scoring API (what-if tools use it)."""
    bs = batch_size or bundle.cfg.eval_batch_size
    out = []
    for i in range(0, len(rows), bs):
        batch = bundle.batcher(rows[i : i + bs])
        out.append(bundle.model(batch["fields"], pooling=pooling).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)

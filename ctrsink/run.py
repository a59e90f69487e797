"""The run directory: what a trained model leaves behind, and how to build a model back from it.

RUN_DIR/config.yaml            resolved config            RUN_DIR/run.json        data, backbone, versions, seed
RUN_DIR/backbone/config.json   backbone skeleton          RUN_DIR/tokenizer/      the tokenizer used (sink included)
RUN_DIR/metrics.jsonl          one row per epoch/split/pooling     RUN_DIR/final_metrics.json  test at best
RUN_DIR/checkpoint/best/model.safetensors     RUN_DIR/checkpoint/last/  model + optimizer + trainer state
RUN_DIR/predictions_test.parquet   one logit per test sample at the best checkpoint (paired user bootstrap)
ID rows (`model` != ctrsink) have no backbone/ or tokenizer/; SRP4CTR-lite may leave its pre-trained RUN_DIR/encoder/.

Each model sits behind a family (`ctrsink.family.ModelFamily`): `TextFamily` (a language model over the rendered
text, `CTRModel` + `Batcher`) and `IDFamily` (the ID rows, `IDModel` + `IDBatcher`); `family_of(cfg)` picks one.
Both live here because what a family saves is part of the run directory described above.
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

from ctrsink.backbones import Backbone, backbone_from_run, load_backbone
from ctrsink.batches import Batcher
from ctrsink.config import Config, load_config
from ctrsink.errors import CtrSinkError
from ctrsink.family import Built, ModelFamily, RowBatcher, Scorer
from ctrsink.finetune import apply_finetune
from ctrsink.idmodels.common import IDModel
from ctrsink.idmodels.registry import build_id_model, run_pre_step
from ctrsink.idview import IDBatcher
from ctrsink.model import CTRModel
from ctrsink.sinks.tokens import choose_sink_token, fit_embedding_rows, register_sink_token
from ctrsink.text import ITEM_FIELDS, TextRenderer
from ctrsink.textprep import item_vectors_for, tokenizer_corpus

CHECKPOINT = "model.safetensors"
# the run directory's file and folder names, in one place (readers such as the dashboard take them from here)
CONFIG_FILE = "config.yaml"
RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
FINAL_METRICS_FILE = "final_metrics.json"
TRAIN_LOG = "train.log"
ITEM_VECTORS_FILE = "item_vectors.npy"
CHECKPOINT_DIR = "checkpoint"
BEST_CHECKPOINT = "best"
LAST_CHECKPOINT = "last"
BACKBONE_DIR = "backbone"
TOKENIZER_DIR = "tokenizer"
ENCODER_DIR = "encoder"
RUN_RECORD_FILES = (CONFIG_FILE, RUN_FILE, METRICS_FILE, FINAL_METRICS_FILE)  # what describes a run
MODEL_DIRS = (CHECKPOINT_DIR, BACKBONE_DIR, TOKENIZER_DIR, ENCODER_DIR)  # weights, vocabularies: no records
PREDICTIONS_TEST_FILE = "predictions_test.parquet"  # sample_id, user_id, user_code, label, logit
EPOCH_CHECKPOINT_PREFIX = (
    "epoch"  # checkpoint/epoch{k}: after k epochs (keep_epoch_checkpoints; 0 = before any step)
)


def epoch_checkpoint(k: int) -> str:
    """Name of the checkpoint folder kept after `k` epochs (0: the weights training started from)."""
    return f"{EPOCH_CHECKPOINT_PREFIX}{k}"


def epoch_checkpoints(run_dir: str | Path) -> list[tuple[int, str]]:
    """(k, name) of every per-epoch checkpoint a run kept, by k."""
    folder = Path(run_dir) / "checkpoint"
    found = []
    for child in folder.glob(f"{EPOCH_CHECKPOINT_PREFIX}*") if folder.is_dir() else []:
        k = child.name[len(EPOCH_CHECKPOINT_PREFIX) :]
        if k.isdigit() and (child / CHECKPOINT).is_file():
            found.append((int(k), child.name))
    return sorted(found)


@dataclass
class ModelBundle:
    """Everything needed to score samples: model, batcher (renderer inside), config, run record."""

    model: Scorer
    batcher: RowBatcher
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
    sink = sink_id = None
    if cfg.use_sink:
        sink = choose_sink_token(tokenizer, cfg.sink_token, cfg.use_cls_token)
        sink_id, _ = register_sink_token(tokenizer, sink)
        fit_embedding_rows(backbone.model, tokenizer)  # a spare row of a padded matrix needs no resize
        info.update(sink_token=sink, sink_token_id=int(sink_id))
    renderer = TextRenderer(tokenizer, items, cfg, history_fields, sink_token=sink)
    batcher = Batcher(renderer, cfg, item_vectors)
    model = CTRModel(backbone, cfg, history_fields + list(ITEM_FIELDS), history_fields)
    # the sink's own row is read only when no signal replaces it
    own_row = sink_id if cfg.sink_signal == "off" else None
    info["finetune"] = apply_finetune(model, cfg, own_row)
    return model, batcher, info


def assemble_ids(
    cfg: Config, items: pd.DataFrame, history_fields: list[str]
) -> tuple[IDModel, IDBatcher, dict[str, Any]]:
    """ID view and ID row for one config (`model` = din | sparsectr_lite | srp4ctr_lite)."""
    batcher = IDBatcher(items, cfg, history_fields)
    model = build_id_model(cfg, batcher.vocab)
    info = {"id_view": {"vocab": batcher.vocab.to_dict(), "max_behaviors": batcher.max_len}}
    return model, batcher, info


class TextFamily(ModelFamily):
    """A language model over the rendered text (`model` = ctrsink): backbone, tokenizer, sink mechanisms."""

    name = "text"

    def build(
        self, cfg: Config, items: pd.DataFrame, history_fields: list[str], train: pd.DataFrame
    ) -> Built:
        backbone, tokenizer, info = load_backbone(cfg, tokenizer_corpus(items, train, history_fields, cfg))
        return self._assemble(cfg, backbone, tokenizer, items, history_fields, {"backbone": info}, None)

    def load(self, cfg: Config, items: pd.DataFrame, history_fields: list[str], run_dir: Path) -> Built:
        backbone, tokenizer = backbone_from_run(run_dir, cfg)
        cached = run_dir / ITEM_VECTORS_FILE
        return self._assemble(cfg, backbone, tokenizer, items, history_fields, {}, cached)

    def _assemble(
        self,
        cfg: Config,
        backbone: Backbone,
        tokenizer: Any,
        items: pd.DataFrame,
        history_fields: list[str],
        record: dict[str, Any],
        cached_vectors: Path | None,
    ) -> Built:
        vectors = item_vectors_for(cfg, items, cached_vectors)
        model, batcher, sink_info = assemble(cfg, backbone, tokenizer, items, history_fields, vectors)
        return Built(model, batcher, {**record, **sink_info}, tokenizer, {"item_vectors": vectors})

    def save(self, built: Built, run_dir: Path) -> None:
        if built.extras.get("item_vectors") is not None:
            np.save(run_dir / ITEM_VECTORS_FILE, built.extras["item_vectors"])
        built.model.backbone.model.config.save_pretrained(run_dir / BACKBONE_DIR)
        built.tokenizer.save_pretrained(run_dir / TOKENIZER_DIR)


class IDFamily(ModelFamily):
    """The ID-based comparison rows (`model` = din | sparsectr_lite | srp4ctr_lite): nothing to save beside the
    checkpoint; a row may ask for a pre-step (`ctrsink.idmodels.registry`)."""

    name = "id"
    kept_on_restart = (ENCODER_DIR,)  # SRP4CTR-lite's pre-step reuses a pre-trained encoder when it matches

    def build(
        self, cfg: Config, items: pd.DataFrame, history_fields: list[str], train: pd.DataFrame
    ) -> Built:
        return self._assemble(cfg, items, history_fields)

    def load(self, cfg: Config, items: pd.DataFrame, history_fields: list[str], run_dir: Path) -> Built:
        return self._assemble(cfg, items, history_fields)

    def _assemble(self, cfg: Config, items: pd.DataFrame, history_fields: list[str]) -> Built:
        model, batcher, id_info = assemble_ids(cfg, items, history_fields)
        backbone = {"name": cfg.model, "family": "id", "text": False}
        return Built(model, batcher, {"backbone": backbone, **id_info})

    def prepare(self, built: Built, cfg: Config, data_dir: Path, run_dir: Path) -> None:
        run_pre_step(built.model, cfg, data_dir, run_dir)


def family_of(cfg: Config) -> ModelFamily:
    """The family that builds `cfg.model`."""
    return TextFamily() if cfg.model == "ctrsink" else IDFamily()


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
    built = family_of(cfg).load(cfg, items, info["history_fields"], run_dir)
    load_model(built.model, str(weights), strict=True)
    built.model.eval()
    return ModelBundle(built.model, built.batcher, cfg, info, built.tokenizer)


@torch.no_grad()
def score_rows(
    bundle: ModelBundle,
    rows: list[dict[str, Any]],
    pooling: str | None = None,
    batch_size: int | None = None,
) -> np.ndarray:
    """Logits for sample rows (dicts in the sample schema). The public scoring API (what-if tools use it).

    `pooling` defaults to the run's `eval_pooling` (the pooling its checkpoint was selected and tested with).
    """
    pooling = pooling or bundle.cfg.eval_pooling
    bs = batch_size or bundle.cfg.eval_batch_size
    out = []
    for i in range(0, len(rows), bs):
        batch = bundle.batcher(rows[i : i + bs])
        out.append(bundle.model(batch["fields"], pooling=pooling).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)

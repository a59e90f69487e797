"""`model` config value -> ID row class, and the pre-step a row asks for before training.

Both are named by module path and imported lazily, so `ctrsink` starts without loading every row, and a row's
pre-step (which may import the row itself, as SRP4CTR-lite's pre-training does) forms no import circle.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctrsink.config import Config
from ctrsink.idmodels.common import IDModel, IDVocab


@dataclass(frozen=True)
class IDRow:
    module: str
    cls: str
    # "module:function" called as function(model, cfg, data_dir, run_dir) before a new run's first epoch
    pre_step: str | None = None


ID_MODELS = {
    "din": IDRow("ctrsink.idmodels.din", "DIN"),
    "sparsectr_lite": IDRow("ctrsink.idmodels.sparsectr", "SparseCTRLite"),
    "srp4ctr_lite": IDRow(
        "ctrsink.idmodels.srp4ctr", "SRP4CTRLite", pre_step="ctrsink.pretrain:prepare_encoder"
    ),
}


def build_id_model(cfg: Config, vocab: IDVocab) -> IDModel:
    row = ID_MODELS[cfg.model]
    return getattr(importlib.import_module(row.module), row.cls)(cfg, vocab)


def run_pre_step(model: IDModel, cfg: Config, data_dir: Path, run_dir: Path) -> Any:
    """The row's pre-step, if it has one (SRP4CTR-lite: pre-train its encoder, or reuse one, and load it)."""
    step = ID_MODELS[cfg.model].pre_step
    if step is None:
        return None
    module, name = step.split(":")
    return getattr(importlib.import_module(module), name)(model, cfg, data_dir, run_dir)

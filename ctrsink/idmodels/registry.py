"""`model` config value -> ID row class (imported lazily, so `ctrsink` starts without loading every row)."""

from __future__ import annotations

import importlib

from ctrsink.config import Config
from ctrsink.idmodels.common import IDModel, IDVocab

ID_MODELS = {
    "din": ("ctrsink.idmodels.din", "DIN"),
    "sparsectr_lite": ("ctrsink.idmodels.sparsectr", "SparseCTRLite"),
    "srp4ctr_lite": ("ctrsink.idmodels.srp4ctr", "SRP4CTRLite"),
}


def build_id_model(cfg: Config, vocab: IDVocab) -> IDModel:
    module, name = ID_MODELS[cfg.model]
    return getattr(importlib.import_module(module), name)(cfg, vocab)

"""The one interface every model sits behind, so the training loop, `evaluate`, `predict`, `ablate` and sinkviz's
capture treat a language model over text and an ID row alike.

A *family* builds a model and its batcher from a config and the data (`build`), rebuilds the same skeleton from a
run directory (`load`), writes what it needs beside the checkpoint (`save`), runs a pre-step a row asks for before
training (`prepare`), and reports its cost. The two families are `TextFamily` and `IDFamily` in `ctrsink.run`
(`family_of(cfg)` picks one).

What a family hands back (`Built`) follows two small protocols:

    RowBatcher   rows (dicts in the sample schema) -> {"fields", "labels", "sample_id", "user_code"}
    Scorer       model(fields, pooling=...) -> logits (B,); backbone_parameters() train at `lr`,
                 new_parameters() at `head_lr` (`CTRModel`, and `IDModel` whose rows ignore `pooling`)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
import torch

from ctrsink.config import Config
from ctrsink.cost import model_cost


class RowBatcher(Protocol):
    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]: ...


class Scorer(Protocol):
    def __call__(self, fields: Any, pooling: str = "all_tokens") -> torch.Tensor: ...

    def backbone_parameters(self) -> list[torch.nn.Parameter]: ...

    def new_parameters(self) -> list[torch.nn.Parameter]: ...


@dataclass
class Built:
    """A model ready to train or score, with what its family needs to save it."""

    model: torch.nn.Module  # a Scorer
    batcher: RowBatcher
    record: dict[str, Any] = field(default_factory=dict)  # the family's entries of run.json ("backbone", ...)
    tokenizer: Any = None  # text family only
    extras: dict[str, Any] = field(default_factory=dict)  # what `save` writes beside the checkpoint


class ModelFamily:
    """Base of the families; the hooks a family does not need are no-ops."""

    name = "family"
    kept_on_restart: tuple[
        str, ...
    ] = ()  # run-dir entries a new run in the same folder keeps (see `prepare`)

    def build(
        self, cfg: Config, items: pd.DataFrame, history_fields: list[str], train: pd.DataFrame
    ) -> Built:
        """A fresh model for a new run (initialised from the global torch RNG, seeded by the caller)."""
        raise NotImplementedError

    def load(self, cfg: Config, items: pd.DataFrame, history_fields: list[str], run_dir: Path) -> Built:
        """The skeleton of a run's model (weights come from a checkpoint): to resume it or to score with it."""
        raise NotImplementedError

    def save(self, built: Built, run_dir: Path) -> None:
        """Write what `load` needs besides config.yaml, run.json and the checkpoint (main process only)."""

    def prepare(self, built: Built, cfg: Config, data_dir: Path, run_dir: Path) -> None:
        """A step the row asks for before its first epoch (SRP4CTR-lite: pre-train and load its encoder).

        Called on the main process first; the other processes call it after it returned and read what it wrote.
        """

    def cost(self, built: Built, frame: pd.DataFrame) -> dict[str, Any]:
        """Parameters and FLOPs per sample, counted on `frame` (see `ctrsink.cost`)."""
        return model_cost(built.model, built.batcher, frame)

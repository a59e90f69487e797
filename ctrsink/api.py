"""The toolkit's public interface for tools built on it; the dashboard (app/) imports ctrsink only from here.

- the run directory's file names (defined in `ctrsink.run`) and the sample set's (`ctrsink.data.manifest`)
- ablations: the named variants, a variant's config, config overrides checked key by key against `Config`, the
  argument list of a `ctrsink ablate` launch (every part validated), an ablation table and its summary
- a prepared sample set: its splits and items
- a trained run loaded for scoring, logits of sample rows, and the behaviors the model keeps of a row
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ctrsink import ablate as _ablate
from ctrsink.config import BEHAVIOR_SELECTIONS, PROMPT_PRESETS, Config, config_from_dict, load_config
from ctrsink.data import SampleSet
from ctrsink.data import load_sample_set as _load_sample_set
from ctrsink.data.manifest import ITEMS_FILE, MANIFEST_FILE, SPLIT_FILES, SPLITS
from ctrsink.errors import CtrSinkError
from ctrsink.intervals import T_INTERVAL, t_interval
from ctrsink.run import (
    BACKBONE_DIR,
    BEST_CHECKPOINT,
    CHECKPOINT,
    CHECKPOINT_DIR,
    CONFIG_FILE,
    ENCODER_DIR,
    FINAL_METRICS_FILE,
    ITEM_VECTORS_FILE,
    METRICS_FILE,
    MODEL_DIRS,
    RUN_FILE,
    RUN_RECORD_FILES,
    TOKENIZER_DIR,
    TRAIN_LOG,
    ModelBundle,
    score_rows,
)
from ctrsink.run import load_run as _load_run
from ctrsink.text import ROLE_ID, ROLES

__all__ = [
    "BACKBONE_DIR",
    "BEST_CHECKPOINT",
    "CHECKPOINT",
    "CHECKPOINT_DIR",
    "CONFIG_FILE",
    "ENCODER_DIR",
    "FINAL_METRICS_FILE",
    "ITEM_VECTORS_FILE",
    "METRICS_FILE",
    "MODEL_DIRS",
    "OVERRIDE_CHOICES",
    "ROLES",
    "ROLE_ID",
    "RUN_FILE",
    "RUN_RECORD_FILES",
    "SAMPLE_SET_FILES",
    "SPLITS",
    "T_INTERVAL",
    "TABLE_COLUMNS",
    "TOKENIZER_DIR",
    "TRAIN_LOG",
    "VARIANT_KEYS",
    "Config",
    "CtrSinkError",
    "ModelBundle",
    "SampleSet",
    "ablation_args",
    "base_config",
    "config_from_record",
    "kept_behaviors",
    "load_items",
    "load_run",
    "load_sample_set",
    "load_split",
    "override_options",
    "read_ablation",
    "run_dir_name",
    "score_rows",
    "summary_table",
    "t_interval",
    "validated_overrides",
    "variant_config",
    "variants",
]

SAMPLE_SET_FILES = (MANIFEST_FILE, ITEMS_FILE, *SPLIT_FILES.values())
TABLE_COLUMNS = tuple(_ablate.TABLE_COLUMNS)
VARIANT_KEYS = tuple(_ablate.VARIANT_KEYS)  # decided by the variant: an override may not set them
# String options an override may set, each with its closed set of values: free text (a backbone path, a prompt,
# an encoder folder) never reaches a launch from here. Config.validate checks the same choices again; a key that
# is not (or no longer) a Config field is never offered.
OVERRIDE_CHOICES: dict[str, tuple[str, ...]] = {
    "backbone": ("scratch:bert-tiny", "scratch:qwen2-tiny", "bundled:minilm"),
    "prompt_preset": tuple(PROMPT_PRESETS),
    "behavior_text": ("title", "title_categories"),
    "behavior_selection": BEHAVIOR_SELECTIONS,
    "time_gap_ref": ("target", "previous"),
    "index_origin": ("oldest", "newest"),
    "precision": ("fp32", "bf16", "fp16"),
    "finetune": ("full", "lora"),
    "eval_pooling": ("all_tokens", "sink_only"),
    "signal_carrier": ("sink", "separator"),
    "behavior_signal_text": ("off", "time_gap", "index"),
    "sparsectr.chunking": ("personalized", "fixed"),
    "sparsectr.temporal_bias": ("none", "shared", "per_head"),
    "sparsectr.gates": ("sigmoid", "softmax"),
    "srp4ctr.init": ("pretrained", "random"),
    "srp4ctr.encoder_mode": ("finetune", "frozen"),
    "srp4ctr.kv": ("shared", "untied"),
}
_KEY = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)?")
_INT = re.compile(r"[+-]?\d{1,12}")
_FLOAT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


# ------------------------------------------------------------------------------------------------ variants


def variants() -> dict[str, dict[str, Any]]:
    """The named ablation variants and the config values each one decides (a copy)."""
    return {name: dict(values) for name, values in _ablate.VARIANTS.items()}


def variant_config(base: Config, name: str) -> Config:
    return _ablate.variant_config(base, name)


def run_dir_name(variant: str, seed: int) -> str:
    """A grid member's folder under ABLATION/runs/."""
    return _ablate.run_dir_name(variant, seed)


def base_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Defaults, a YAML file and `key=value` overrides, validated (raises CtrSinkError naming the option)."""
    return load_config(path, list(overrides))


def config_from_record(values: dict[str, Any]) -> Config:
    """A config from its stored mapping (config.yaml, grid.json's `base`), validated."""
    return config_from_dict(values)


# ------------------------------------------------------------------------------------------------ overrides


def override_options() -> dict[str, type | tuple[str, ...]]:
    """Every option an override may set -> its type (bool, int, float) or its allowed values."""
    out: dict[str, type | tuple[str, ...]] = {}
    for key, typ in typing.get_type_hints(Config).items():
        if key in VARIANT_KEYS:
            continue
        if dataclasses.is_dataclass(typ):
            for sub, sub_typ in typing.get_type_hints(typ).items():
                _add_option(out, f"{key}.{sub}", sub_typ)
        else:
            _add_option(out, key, typ)
    return out


def _add_option(out: dict[str, type | tuple[str, ...]], key: str, typ: Any) -> None:
    if typ in (bool, int, float):
        out[key] = typ
    elif key in OVERRIDE_CHOICES:
        out[key] = OVERRIDE_CHOICES[key]


def validated_overrides(pairs: Sequence[str]) -> list[str]:
    """`key=value` overrides checked against Config's fields and types -> their canonical text.

    Raises CtrSinkError naming the override: unknown key, a key the variant decides, a free-text option, a value
    of the wrong type or outside the option's choices. The result holds only our own rendering of the values.
    """
    options = override_options()
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, raw = str(pair).strip().partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep or not _KEY.fullmatch(key):
            raise CtrSinkError(f"config override {pair!r}: expected key=value with a config option as key")
        if key in VARIANT_KEYS:
            raise CtrSinkError(f"config override {key!r}: decided by the variant (the sink components)")
        if key not in options:
            hint = "free-text options cannot be set here" if _is_field(key) else "unknown config option"
            raise CtrSinkError(f"config override {key!r}: {hint}")
        if key in out:
            raise CtrSinkError(f"config override {key!r}: given twice")
        out[key] = _canonical(key, raw, options[key])
    return [f"{k}={v}" for k, v in out.items()]


def _is_field(key: str) -> bool:
    head, _, sub = key.partition(".")
    hints = typing.get_type_hints(Config)
    if head not in hints:
        return False
    if not sub or not dataclasses.is_dataclass(hints[head]):
        return True  # e.g. prompts.pos: a mapping of free text
    return sub in typing.get_type_hints(hints[head])


def _canonical(key: str, raw: str, kind: type | tuple[str, ...]) -> str:
    if isinstance(kind, tuple):
        if raw not in kind:
            raise CtrSinkError(f"config override {key!r}: {raw!r} is not one of {', '.join(kind)}")
        return raw
    if kind is bool:
        if raw.lower() not in ("true", "false"):
            raise CtrSinkError(f"config override {key!r}: expected true or false, got {raw!r}")
        return raw.lower()
    if kind is int:
        if not _INT.fullmatch(raw):
            raise CtrSinkError(f"config override {key!r}: expected an integer, got {raw!r}")
        return str(int(raw))
    if not _FLOAT.fullmatch(raw) or not math.isfinite(float(raw)):
        raise CtrSinkError(f"config override {key!r}: expected a number, got {raw!r}")
    return repr(float(raw))


def ablation_args(
    data_dir: str | Path,
    variant_names: Sequence[str],
    seeds: Sequence[int],
    out_dir: str | Path,
    overrides: Sequence[str] = (),
    config: str | Path | None = None,
) -> list[str]:
    """The validated argument list of `ctrsink ablate` (without the program): run it as a list, never a shell.

    Paths must be absolute (an argument starting with '-' would read as an option); variants must be known, seeds
    integers, overrides pass `validated_overrides`, and the base config with every variant must validate.
    """
    paths = {"--data": data_dir, "--out": out_dir} | ({"--config": config} if config else {})
    for option, path in paths.items():
        if not Path(path).is_absolute():
            raise CtrSinkError(f"option '{option}': expected an absolute path, got {str(path)!r}")
    if not seeds or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) for s in seeds):
        raise CtrSinkError(f"option '--seeds': expected one or more integers, got {list(seeds)!r}")
    if not variant_names:
        raise CtrSinkError("option '--variants': give at least one variant")
    canonical = validated_overrides(overrides)
    base = load_config(config, canonical)
    for name in variant_names:
        variant_config(base, name)  # unknown variants and invalid combinations stop here, naming the option
    args = ["ablate", "--data", str(data_dir), "--variants", ",".join(variant_names)]
    args += ["--seeds", ",".join(str(int(s)) for s in seeds), "--out", str(out_dir)]
    if config:
        args += ["--config", str(config)]
    for pair in canonical:
        args += ["--set", pair]
    return args


# ------------------------------------------------------------------------------------------------ ablation tables


def read_ablation(path: str | Path) -> pd.DataFrame:
    """An ablation's tidy table (ablation.parquet, or a folder holding it), its columns checked."""
    file = Path(path)
    file = file / "ablation.parquet" if file.is_dir() else file
    table = pd.read_parquet(file)
    missing = [c for c in TABLE_COLUMNS if c not in table.columns]
    if missing:
        raise CtrSinkError(f"{file} lacks column(s) {', '.join(missing)}")
    return table


def summary_table(table: pd.DataFrame) -> pd.DataFrame:
    """Test metrics at each run's best epoch per variant, with intervals over seeds and differences to baseline."""
    return _ablate.summary_table(table)


# ------------------------------------------------------------------------------------------------ sample sets


def load_sample_set(data_dir: str | Path) -> SampleSet:
    """A prepared sample set as Arrow tables (hashes are checked by training, not by readers)."""
    return _load_sample_set(data_dir, verify=False)


def load_split(data_dir: str | Path, split: str) -> pd.DataFrame:
    """One split of a prepared sample set, indexed by sample_id (the column kept)."""
    if split not in SPLITS:
        raise CtrSinkError(f"split {split!r} is not one of {', '.join(SPLITS)}")
    return load_sample_set(data_dir).splits[split].to_pandas().set_index("sample_id", drop=False)


def load_items(data_dir: str | Path) -> pd.DataFrame:
    """The items table of a prepared sample set, indexed by item_idx (the column kept)."""
    return load_sample_set(data_dir).items.to_pandas().set_index("item_idx", drop=False)


# ------------------------------------------------------------------------------------------------ scoring


def load_run(run_dir: str | Path, checkpoint: str = BEST_CHECKPOINT) -> ModelBundle:
    """A trained run rebuilt for scoring (model, batcher, config, run record); score rows with `score_rows`."""
    return _load_run(run_dir, checkpoint=checkpoint)


def kept_behaviors(bundle: ModelBundle, row: dict[str, Any]) -> dict[str, list[int]]:
    """Per history field, the stored-history index of each behavior the model keeps of `row`, in its order.

    The run's own batcher decides (recent or by similarity, then the token budget): `FieldEncoding.kept`.
    Empty for ID-row runs, which have no text rendering.
    """
    encode = getattr(bundle.batcher, "encode", None)
    renderer = getattr(bundle.batcher, "renderer", None)
    if encode is None or renderer is None:
        return {}
    encodings = encode(dict(row))["enc"]
    return {f: [int(j) for j in encodings[f].kept] for f in renderer.history_fields}

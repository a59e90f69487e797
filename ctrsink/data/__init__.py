"""Data layer: raw logs (MovieLens, KuaiRec, any CSV/Parquet) -> canonical tables -> time-split samples on disk.

- `load_movielens` / `load_kuairec` / `load_generic` -> `LogTables(interactions, items, meta)`
- `build_samples(tables)` -> `SampleSet(splits, items, manifest)` in memory
- `prepare(source, path, out)` writes the same atomically as Parquet + manifest.json
- `prepare("reference", folder, out)` turns the reference code's finished train/valid/test sample files into a
  sample set, keeping their splits and rows (`ctrsink.data.reference`)
- `load_sample_set(out)` reads it back (unpacks as `splits, items, manifest`)
"""

import inspect
from pathlib import Path
from typing import Any

from ctrsink.data.generic import load_generic
from ctrsink.data.kuairec import load_kuairec
from ctrsink.data.manifest import SCHEMA_VERSION, SPLITS
from ctrsink.data.movielens import load_movielens
from ctrsink.data.reference import prepare_reference
from ctrsink.data.samples import (
    HISTORY_FIELDS,
    LOADERS,
    SampleSet,
    build_samples,
    load_sample_set,
)
from ctrsink.data.samples import prepare as prepare_log
from ctrsink.data.schema import LogTables
from ctrsink.errors import CtrSinkError

# "reference" reads finished samples, not a behavior log, so it bypasses build_samples
SOURCES = (*LOADERS, "reference")


def prepare(source: str, path: str | Path, out: str | Path, **options: Any) -> dict[str, Any]:
    """Write a sample set to `out`: from a behavior log (`LOADERS`) or from the reference's sample files."""
    if source == "reference":
        options = {k: v for k, v in options.items() if v is not None}
        valid = sorted(set(inspect.signature(prepare_reference).parameters) - {"path", "out"})
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise CtrSinkError(
                f"option(s) {', '.join(unknown)} do not apply to --source reference (its files are finished"
                f" samples with their own splits); valid: {', '.join(valid)}"
            )
        return prepare_reference(path, out, **options)
    return prepare_log(source, path, out, **options)


__all__ = [
    "HISTORY_FIELDS",
    "SCHEMA_VERSION",
    "SOURCES",
    "SPLITS",
    "LogTables",
    "SampleSet",
    "build_samples",
    "load_generic",
    "load_kuairec",
    "load_movielens",
    "load_sample_set",
    "prepare",
    "prepare_reference",
]

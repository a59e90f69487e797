"""Data layer: raw logs (MovieLens, KuaiRec, any CSV/Parquet) -> canonical tables -> time-split samples on disk.

- `load_movielens` / `load_kuairec` / `load_generic` -> `LogTables(interactions, items, meta)`
- `build_samples(tables)` -> `SampleSet(splits, items, manifest)` in memory
- `prepare(source, path, out)` writes the same atomically as Parquet + manifest.json
- `load_sample_set(out)` reads it back (unpacks as `splits, items, manifest`)
"""

from ctrsink.data.generic import load_generic
from ctrsink.data.kuairec import load_kuairec
from ctrsink.data.manifest import SCHEMA_VERSION, SPLITS
from ctrsink.data.movielens import load_movielens
from ctrsink.data.samples import (
    HISTORY_FIELDS,
    LOADERS,
    SampleSet,
    build_samples,
    load_sample_set,
    prepare,
)
from ctrsink.data.schema import LogTables

SOURCES = tuple(LOADERS)

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
]

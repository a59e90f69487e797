"""The sample-set folder contract: file names, manifest.json (schema version, provenance, sizes, hashes), read/write."""

from __future__ import annotations

import hashlib
import io
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ctrsink.atomic import atomic_write_bytes, atomic_write_json
from ctrsink.errors import CtrSinkError

SCHEMA_VERSION = 1
SPLITS = ("train", "valid", "test")
MANIFEST_FILE = "manifest.json"
ITEMS_FILE = "items.parquet"
SPLIT_FILES = {split: f"{split}.parquet" for split in SPLITS}
DATA_FILES = (*SPLIT_FILES.values(), ITEMS_FILE)
PARQUET_COMPRESSION = "zstd"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def combined_hash(files: dict[str, str]) -> str:
    """One hash for the sample set: sha256 over `name:sha256` lines of the split files, in split order."""
    lines = "".join(f"{SPLIT_FILES[s]}:{files[SPLIT_FILES[s]]}\n" for s in SPLITS)
    return sha256_bytes(lines.encode("utf-8"))


def utc_iso(ts: int) -> str:
    return datetime.fromtimestamp(int(ts), tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def time_range(ts: Any) -> dict[str, Any]:
    """The manifest's `time_range` of target timestamps (Unix seconds): min and max, as ints and UTC strings."""
    return {
        "min": int(ts.min()),
        "max": int(ts.max()),
        "min_utc": utc_iso(ts.min()),
        "max_utc": utc_iso(ts.max()),
    }


def parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression=PARQUET_COMPRESSION)
    return sink.getvalue()


def write_sample_files(
    folder: Path, splits: dict[str, pa.Table], items: pa.Table, manifest: dict[str, Any]
) -> dict[str, Any]:
    """Write the Parquet files and manifest.json into `folder`; returns the manifest with `files` and `hash` set."""
    files: dict[str, str] = {}
    tables = {SPLIT_FILES[s]: splits[s] for s in SPLITS} | {ITEMS_FILE: items}
    for name, table in tables.items():
        data = parquet_bytes(table)
        atomic_write_bytes(folder / name, data)
        files[name] = sha256_bytes(data)
    manifest = dict(manifest, files=files, hash=combined_hash(files))
    atomic_write_json(folder / MANIFEST_FILE, manifest)
    return manifest


def read_manifest(folder: Path) -> dict[str, Any]:
    """Parse and check manifest.json of a prepared sample-set folder."""
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise CtrSinkError(f"{path}: file not found (is {folder} the --out folder of `ctrsink prepare`?)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CtrSinkError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or "schema_version" not in manifest:
        raise CtrSinkError(f"{path}: not a ctrsink sample-set manifest (no schema_version)")
    if manifest["schema_version"] != SCHEMA_VERSION:
        raise CtrSinkError(
            f"{path}: schema_version {manifest['schema_version']} is not supported (expected {SCHEMA_VERSION});"
            " run `ctrsink prepare` again"
        )
    return manifest


def is_sample_set_dir(folder: Path) -> bool:
    """True for a folder written by `prepare` (so it may be replaced), or an empty folder."""
    if not folder.is_dir():
        return False
    entries = {p.name for p in folder.iterdir()}
    if not entries:
        return True
    if MANIFEST_FILE not in entries or not entries <= {MANIFEST_FILE, *DATA_FILES}:
        return False
    try:
        read_manifest(folder)
    except CtrSinkError:
        return False
    return True


def verify_files(folder: Path, manifest: dict[str, Any]) -> None:
    """Every data file exists and matches the sha256 recorded in the manifest."""
    recorded = manifest.get("files", {})
    for name in DATA_FILES:
        path = folder / name
        if not path.is_file():
            raise CtrSinkError(f"{path}: file not found (the sample set in {folder} is incomplete)")
        if name in recorded and sha256_file(path) != recorded[name]:
            raise CtrSinkError(f"{path}: sha256 differs from {MANIFEST_FILE}; the file changed after prepare")

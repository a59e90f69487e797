"""Samples: histories strictly before the target (no leaks, ties excluded), time split, prepare/load round trip."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from ctrsink.atomic import atomic_dir, atomic_write_json, atomic_write_text
from ctrsink.data import LogTables, build_samples, load_movielens, load_sample_set, prepare
from ctrsink.errors import CtrSinkError

LIST_TYPES = {
    "item_idx": pa.list_(pa.int32()),
    "timestamp": pa.list_(pa.int64()),
    "label": pa.list_(pa.int8()),
}


def _tables(rows: list[tuple[str, str, int, int]], items: list[str] | None = None) -> LogTables:
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "label"])
    ids = items or sorted(set(inter["item_id"]))
    items_df = pd.DataFrame({"item_id": ids, "title": [f"title {i}" for i in ids], "categories": "g"})
    return LogTables(
        inter, items_df, {"source": "test", "layout": "hand", "path": "hand.csv", "label_rule": "given"}
    )


# user a has a tie at t=100; c has only ties (no samples); b has a single interaction.
TINY = [
    ("a", "i1", 100, 1),
    ("a", "i2", 100, 0),
    ("a", "i3", 200, 1),
    ("a", "i4", 300, 0),
    ("b", "i1", 150, 1),
    ("c", "i2", 50, 0),
    ("c", "i3", 50, 1),
    ("d", "i1", 10, 0),
    ("d", "i2", 20, 1),
    ("d", "i3", 30, 1),
    ("d", "i4", 40, 0),
]


def _all_rows(sample_set) -> pd.DataFrame:
    frames = [t.to_pandas().assign(split=s) for s, t in sample_set.splits.items()]
    return pd.concat(frames, ignore_index=True)


def test_tiny_log_exact_histories_split_mode() -> None:
    ss = build_samples(_tables(TINY), split_fractions=(0.6, 0.2, 0.2))
    df = _all_rows(ss).set_index("sample_id")
    # Samples in time order: d@20, d@30, d@40 (train), a@200 (valid), a@300 (test); ties and single users give none.
    assert list(df.index) == [8, 9, 10, 2, 3]
    assert list(df["split"]) == ["train", "train", "train", "valid", "test"]
    idx = {item: i for i, item in enumerate(ss.items.column("item_id").to_pylist())}
    assert df.loc[2, "pos_item_idx"].tolist() == [idx["i1"]] and df.loc[2, "neg_item_idx"].tolist() == [
        idx["i2"]
    ]
    assert df.loc[3, "pos_item_idx"].tolist() == [idx["i1"], idx["i3"]]
    assert df.loc[3, "pos_timestamp"].tolist() == [100, 200] and df.loc[3, "pos_label"].tolist() == [1, 1]
    assert df.loc[3, "neg_item_idx"].tolist() == [idx["i2"]] and df.loc[3, "neg_timestamp"].tolist() == [100]
    assert df.loc[8, "pos_item_idx"].tolist() == [] and df.loc[8, "neg_item_idx"].tolist() == [idx["i1"]]
    assert df.loc[10, "pos_timestamp"].tolist() == [20, 30] and df.loc[10, "neg_timestamp"].tolist() == [10]
    m = ss.manifest
    assert m["sizes"] == {"train": 3, "valid": 1, "test": 1}
    assert m["dropped"]["single_interaction_users"] == 1 and m["dropped"]["targets_without_history"] == 6
    assert m["history_fields"] == ["pos", "neg"] and m["num_users"] == 4 and m["num_items"] == 4
    assert m["split_rule"]["boundaries"]["valid"] == {"first": 200, "last": 200}


def test_tiny_log_single_mode_and_schema() -> None:
    ss = build_samples(_tables(TINY), history_mode="single", split_fractions=(0.6, 0.2, 0.2))
    table = ss.splits["test"]
    assert table.column_names == [
        "sample_id", "user_id", "item_idx", "timestamp", "label", "feedback",
        "all_item_idx", "all_timestamp", "all_label",
    ]  # fmt: skip
    assert (
        table.schema.field("sample_id").type == pa.int64()
        and table.schema.field("user_id").type == pa.string()
    )
    assert table.schema.field("item_idx").type == pa.int32() and table.schema.field("label").type == pa.int8()
    assert table.schema.field("feedback").type == pa.float64()
    for column, list_type in LIST_TYPES.items():
        assert table.schema.field(f"all_{column}").type == list_type
    row = table.to_pylist()[0]
    assert row["sample_id"] == 3 and row["user_id"] == "a"
    assert row["all_timestamp"] == [100, 100, 200] and row["all_label"] == [1, 0, 1]
    items = ss.items
    assert items.column_names == ["item_idx", "item_id", "title", "categories", "text"]
    assert (
        items.column("item_idx").to_pylist() == [0, 1, 2, 3]
        and items.schema.field("item_idx").type == pa.int32()
    )
    assert ss.manifest["history_fields"] == ["all"]


def test_min_history_counts_all_earlier_behaviors() -> None:
    ss = build_samples(_tables(TINY), min_history=2, split_fractions=(0.34, 0.33, 0.33))
    assert sorted(_all_rows(ss)["sample_id"]) == [2, 3, 9, 10]
    ss0 = build_samples(_tables(TINY), min_history=0)
    assert sum(ss0.manifest["sizes"].values()) == len(TINY)


def _random_log(seed: int, n: int = 3000) -> LogTables:
    rng = np.random.default_rng(seed)
    users = rng.integers(0, 60, n)
    rows = [
        (f"u{u}", f"m{rng.integers(0, 40)}", int(rng.integers(0, 400)), int(rng.random() < 0.4))
        for u in users
    ]  # small time range: many ties within a user
    return _tables(rows, items=[f"m{i}" for i in range(40)])


def _reference(
    tables: LogTables, max_history: int, mode: str, min_history: int
) -> dict[int, dict[str, list]]:
    """Slow, obvious per-sample implementation to compare against."""
    log = tables.interactions
    item_idx = {item: i for i, item in enumerate(tables.items["item_id"])}
    users, items = list(log["user_id"]), [item_idx[i] for i in log["item_id"]]
    times, labels = [int(t) for t in log["timestamp"]], [int(v) for v in log["label"]]
    out = {}
    for i in range(len(log)):
        earlier = [j for j in range(len(log)) if users[j] == users[i] and times[j] < times[i]]
        if len(earlier) < min_history:
            continue
        earlier.sort(key=lambda j: (times[j], j))
        fields = {
            "pos": [j for j in earlier if labels[j] == 1],
            "neg": [j for j in earlier if labels[j] == 0],
        }
        if mode == "single":
            fields = {"all": earlier}
        out[i] = {}
        for name, rows in fields.items():
            rows = rows[-max_history:]
            out[i][f"{name}_item_idx"] = [items[j] for j in rows]
            out[i][f"{name}_timestamp"] = [times[j] for j in rows]
            out[i][f"{name}_label"] = [labels[j] for j in rows]
    return out


@pytest.mark.parametrize(("mode", "max_history", "min_history"), [("split", 5, 1), ("single", 7, 3)])
def test_random_log_matches_reference_and_never_leaks(mode: str, max_history: int, min_history: int) -> None:
    tables = _random_log(seed=7, n=600)
    ss = build_samples(tables, max_history=max_history, history_mode=mode, min_history=min_history)
    df = _all_rows(ss)
    expected = _reference(tables, max_history, mode, min_history)
    assert sorted(df["sample_id"]) == sorted(expected)
    for row in df.itertuples(index=False):
        row = row._asdict()
        for column, values in expected[row["sample_id"]].items():
            assert row[column].tolist() == values, (row["sample_id"], column)
        for field in ss.manifest["history_fields"]:
            ts = row[f"{field}_timestamp"]
            assert (ts < row["timestamp"]).all() and (np.diff(ts) >= 0).all()
            assert len(ts) <= max_history


def test_time_split_is_ordered_and_ids_unique() -> None:
    ss = build_samples(_random_log(seed=1), split_fractions=(0.7, 0.2, 0.1))
    t = {s: ss.splits[s].column("timestamp").to_numpy() for s in ss.splits}
    assert t["train"].max() <= t["valid"].min() and t["valid"].max() <= t["test"].min()
    ids = np.concatenate([ss.splits[s].column("sample_id").to_numpy() for s in ss.splits])
    assert len(ids) == len(set(ids))
    sizes = ss.manifest["sizes"]
    assert abs(sizes["train"] / sum(sizes.values()) - 0.7) < 0.01
    for s in ss.splits:
        assert ss.manifest["positive_rate"][s] == pytest.approx(
            ss.splits[s].column("label").to_numpy().mean(), abs=1e-6
        )


def test_unknown_items_dropped_and_sample_ids_keep_source_rows() -> None:
    tables = _tables(TINY, items=["i1", "i2", "i4"])  # i3 unknown: rows 2, 6 and 9 go
    ss = build_samples(tables, split_fractions=(0.34, 0.33, 0.33))
    df = _all_rows(ss).set_index("sample_id")
    assert list(df.index) == [8, 10, 3]
    assert ss.manifest["dropped"]["unknown_item"] == 3
    assert df.loc[10, "pos_timestamp"].tolist() == [20] and df.loc[3, "pos_timestamp"].tolist() == [100]


def test_max_history_keeps_most_recent() -> None:
    rows = [("u", f"i{k}", 10 * k, 1) for k in range(30)] + [("v", "i0", 5, 1), ("v", "i1", 6, 0)]
    ss = build_samples(_tables(rows), max_history=4)
    df = _all_rows(ss).set_index("sample_id")
    assert df.loc[29, "pos_timestamp"].tolist() == [250, 260, 270, 280]
    assert df.loc[2, "pos_timestamp"].tolist() == [0, 10]
    assert df.loc[31, "pos_timestamp"].tolist() == [5] and df.loc[31, "neg_timestamp"].tolist() == []


def test_prepare_round_trip_and_replace(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    log = _random_log(seed=3).interactions
    log.to_csv(src / "interactions.csv", index=False)
    pd.DataFrame({"item_id": [f"m{i}" for i in range(40)], "title": "t", "genres": "a|b"}).to_csv(
        src / "items.csv", index=False
    )
    out = tmp_path / "runs" / "data"
    manifest = prepare("csv", src, out, max_history=8, split_fractions=None)
    assert sorted(p.name for p in out.iterdir()) == [
        "items.parquet", "manifest.json", "test.parquet", "train.parquet", "valid.parquet",
    ]  # fmt: skip
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == manifest and manifest["schema_version"] == 1 and manifest["max_history"] == 8
    assert set(manifest["files"]) == {"train.parquet", "valid.parquet", "test.parquet", "items.parquet"}
    assert len(manifest["hash"]) == 64 and manifest["source"] == "csv"
    splits, items, loaded = load_sample_set(out)
    assert loaded == manifest and items.num_rows == 40
    assert {s: t.num_rows for s, t in splits.items()} == manifest["sizes"]
    # Same input, same bytes: the hash is reproducible; a changed option replaces the previous output.
    again = prepare("csv", src, out, max_history=8)
    assert again["hash"] == manifest["hash"]
    changed = prepare("csv", src, out, max_history=3, history_mode="single")
    assert changed["hash"] != manifest["hash"] and load_sample_set(out).manifest["history_fields"] == ["all"]
    assert [p.name for p in out.parent.iterdir()] == ["data"]  # no temp or old folders left


def test_atomic_helpers(tmp_path: Path) -> None:
    atomic_write_text(tmp_path / "a.txt", "x")
    atomic_write_json(tmp_path / "b.json", {"k": [1, 2]})
    assert (tmp_path / "a.txt").read_text() == "x" and json.loads((tmp_path / "b.json").read_text()) == {
        "k": [1, 2]
    }
    final = tmp_path / "new" / "deep" / "dir"
    with pytest.raises(RuntimeError), atomic_dir(final) as tmp:
        (tmp / "f").write_text("half")
        raise RuntimeError("boom")
    assert not (tmp_path / "new").exists()
    final.parent.mkdir(parents=True)
    final.mkdir()
    (final / "old").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(final) as tmp:
        raise RuntimeError("boom")
    assert [p.name for p in final.iterdir()] == ["old"]
    with atomic_dir(final) as tmp:
        (tmp / "new").write_text("new")
    assert [p.name for p in final.iterdir()] == ["new"]
    assert sorted(p.name for p in final.parent.iterdir()) == ["dir"]


def _check_real_samples(ss, tables: LogTables) -> None:
    t = {s: ss.splits[s].column("timestamp").to_numpy() for s in ss.splits}
    assert t["train"].max() <= t["valid"].min() and t["valid"].max() <= t["test"].min()
    test = ss.splits["test"].slice(0, 200).to_pandas()
    for row in test.itertuples(index=False):
        assert (row.pos_timestamp < row.timestamp).all() and (row.neg_timestamp < row.timestamp).all()
        assert len(row.pos_item_idx) <= 50 and len(row.neg_item_idx) <= 50
    assert sum(ss.manifest["sizes"].values()) + ss.manifest["dropped"]["targets_without_history"] == len(
        tables.interactions
    )


def test_build_samples_ml1m_partial_is_fast(shared_data: Path) -> None:
    folder = shared_data / "movielens" / "ml-1m"
    if not folder.exists():
        pytest.skip(f"{folder} not present")
    tables = load_movielens(folder)
    start = time.perf_counter()
    ss = build_samples(tables)
    elapsed = time.perf_counter() - start
    assert elapsed < 20, f"build_samples took {elapsed:.1f}s on 487,650 ratings"
    _check_real_samples(ss, tables)
    assert ss.manifest["num_users"] == 2999


def test_prepare_movielens_latest_small(shared_data: Path, tmp_path: Path) -> None:
    folder = shared_data / "movielens" / "ml-latest-small"
    if not folder.exists():
        pytest.skip(f"{folder} not present")
    manifest = prepare("movielens", folder, tmp_path / "out", rating_threshold=4)
    assert manifest["layout"] == "ml-latest" and manifest["label_rule"] == "rating >= 4.0"
    assert manifest["num_interactions"] == 100_004 and manifest["num_users"] == 671
    ss = load_sample_set(tmp_path / "out")
    _check_real_samples(ss, load_movielens(folder))


def test_load_sample_set_detects_changes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _random_log(seed=5).interactions.to_csv(src / "interactions.csv", index=False)
    pd.DataFrame({"item_id": [f"m{i}" for i in range(40)], "title": "t"}).to_csv(
        src / "items.csv", index=False
    )
    out = tmp_path / "out"
    prepare("csv", src, out)
    (out / "valid.parquet").write_bytes((out / "train.parquet").read_bytes())
    with pytest.raises(CtrSinkError, match="valid.parquet"):
        load_sample_set(out)
    assert load_sample_set(out, verify=False).splits["valid"].num_rows > 0

"""Loaders: real MovieLens/KuaiRec files read in place (skipped when absent), synthetic KuaiRec, generic CSV/Parquet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ctrsink.data import LogTables, load_generic, load_kuairec, load_movielens
from ctrsink.data.kuairec import read_caption_table

CANONICAL = {"user_id": "str", "item_id": "str", "timestamp": "int64", "feedback": "float64", "label": "int8"}


def _need(shared_data: Path, sub: str) -> Path:
    folder = shared_data / sub
    if not folder.exists():
        pytest.skip(f"{folder} not present")
    return folder


def _check_canonical(tables: LogTables) -> None:
    inter, items = tables.interactions, tables.items
    assert list(inter.columns) == list(CANONICAL)
    for column, dtype in CANONICAL.items():
        assert str(inter[column].dtype) == dtype, column
    assert list(items.columns) == ["item_id", "title", "categories", "text"]
    assert set(np.unique(inter["label"])) <= {0, 1}
    assert inter["item_id"].isin(items["item_id"]).all()
    assert items["item_id"].is_unique
    for key in ("source", "layout", "path", "label_rule"):
        assert key in tables.meta


# --- MovieLens (real files) -------------------------------------------------------------------------------


def test_movielens_100k(shared_data: Path) -> None:
    tables = load_movielens(_need(shared_data, "movielens/ml-100k"))
    _check_canonical(tables)
    inter, items = tables.interactions, tables.items
    assert tables.meta["layout"] == "ml-100k"
    assert len(inter) == 100_000 and inter["user_id"].nunique() == 943
    assert len(items) == 1682 and inter["item_id"].nunique() == 1682
    assert inter["feedback"].between(1, 5).all()
    toy = items.set_index("item_id").loc["1"]
    assert toy["title"] == "Toy Story (1995)" and toy["categories"] == "Animation|Children's|Comedy"
    # Latin-1 titles decode to real accents.
    assert items["title"].str.contains("é").any()
    assert tables.meta["label_rule"] == "rating >= 4.0"
    assert (inter["label"] == (inter["feedback"] >= 4)).all()


def test_movielens_1m_partial_gzip(shared_data: Path) -> None:
    tables = load_movielens(_need(shared_data, "movielens/ml-1m"), rating_threshold=5)
    _check_canonical(tables)
    inter = tables.interactions
    assert tables.meta["layout"] == "ml-1m"
    assert tables.meta["files"][0].endswith("ratings.PARTIAL-first-487650-lines.dat.gz")
    assert len(inter) == 487_650
    assert inter["user_id"].nunique() == 2999 and inter["item_id"].nunique() == 3615
    assert len(tables.items) == 3883 and tables.meta["dropped"]["unknown_item"] == 0
    assert pd.Timestamp(inter["timestamp"].min(), unit="s").date() == pd.Timestamp("2000-10-04").date()
    assert pd.Timestamp(inter["timestamp"].max(), unit="s").date() == pd.Timestamp("2003-02-27").date()
    assert tables.meta["label_rule"] == "rating >= 5.0"
    assert inter["label"].sum() == (inter["feedback"] == 5).sum()
    assert tables.items["title"].str.contains("é").any()


def test_movielens_latest_small(shared_data: Path) -> None:
    tables = load_movielens(_need(shared_data, "movielens/ml-latest-small"))
    _check_canonical(tables)
    inter, items = tables.interactions, tables.items
    assert tables.meta["layout"] == "ml-latest"
    assert len(inter) == 100_004 and inter["user_id"].nunique() == 671
    assert inter["item_id"].nunique() == 9066 and len(items) == 9125
    assert items["title"].str.contains(",").sum() == 2125  # quoted commas survive
    assert "(no genres listed)" not in set(items["categories"])
    assert (items["categories"] == "").sum() > 0
    assert set(np.unique(inter["feedback"])) == set(np.arange(0.5, 5.01, 0.5))


def test_movielens_threshold_changes_labels(shared_data: Path) -> None:
    folder = _need(shared_data, "movielens/ml-latest-small")
    low, high = load_movielens(folder, rating_threshold=3.0), load_movielens(folder, rating_threshold=4.5)
    assert low.interactions["label"].sum() > high.interactions["label"].sum()
    assert high.meta["label_rule"] == "rating >= 4.5"


# --- KuaiRec ----------------------------------------------------------------------------------------------


def test_kuairec_real_caption_table(shared_data: Path) -> None:
    caption = _need(shared_data, "kuairec") / "kuairec_caption_category.csv"
    if not caption.exists():
        pytest.skip(f"{caption} not present")
    items, repaired = read_caption_table(caption)
    assert sorted(repaired, key=int) == ["1378", "1613", "5910", "6331"]
    assert len(items) == 10_728 and items["item_id"].is_unique
    assert set(items["item_id"].astype(int)) == set(range(10_728))
    by_id = items.set_index("item_id")
    # Repaired rows keep their categories and a caption with the line break restored.
    assert by_id.loc["1613", "categories"] == "明星娱乐|娱乐八卦|明星八卦"
    assert by_id.loc["1378", "categories"] == "明星娱乐"
    assert "\n" in by_id.loc["1378", "text"] and "\n" not in by_id.loc["1378", "title"]
    assert by_id.loc["6331", "categories"] == ""
    assert not items["categories"].str.contains("UNKNOWN").any()
    assert (items["title"] != "").all() and items["title"].str.len().max() <= 64


def test_kuairec_synthetic_matrix_with_real_side_tables(
    shared_data: Path, kuairec_dir: Path, tmp_path: Path
) -> None:
    real = _need(shared_data, "kuairec")
    folder = tmp_path / "real_side"
    folder.mkdir()
    (folder / "kuairec_caption_category.csv").symlink_to(real / "kuairec_caption_category.csv")
    (folder / "item_categories.csv").symlink_to(real / "item_categories.csv")
    (folder / "small_matrix.csv").symlink_to(kuairec_dir / "small_matrix.csv")
    tables = load_kuairec(folder)
    _check_canonical(tables)
    raw = pd.read_csv(kuairec_dir / "small_matrix.csv")
    assert len(tables.interactions) == len(raw) - 1  # only the row with neither timestamp nor time is dropped
    assert tables.meta["dropped"]["unknown_item"] == 0 and len(tables.items) == 10_728


def test_kuairec_synthetic(kuairec_dir: Path) -> None:
    tables = load_kuairec(kuairec_dir, watch_ratio_threshold=2.0)
    _check_canonical(tables)
    inter, meta = tables.interactions, tables.meta
    raw = pd.read_csv(kuairec_dir / "small_matrix.csv")
    assert meta["layout"] == "kuairec-small" and meta["label_rule"] == "watch_ratio >= 2.0"
    assert meta["repaired_caption_rows"] == ["1378"]
    assert meta["dropped"]["no_timestamp"] == 1 and meta["timestamp_from_time"] == 1
    unknown = int(raw.drop(index=4)["video_id"].isin([1, 2000, 9999]).sum())  # row 4 has no time at all
    assert unknown > 0 and meta["dropped"]["unknown_item"] == unknown
    assert len(inter) == len(raw) - 1 - unknown
    assert (inter["label"] == (inter["feedback"] >= 2.0)).all()
    assert inter["feedback"].max() > 2 and inter["label"].sum() > 0
    # The row without `timestamp` gets it back from Beijing-time `time`, to the second.
    expected = int(np.floor(pd.Timestamp(raw.loc[3, "time"]).timestamp() - 8 * 3600))
    assert expected in set(inter["timestamp"])
    by_id = tables.items.set_index("item_id")
    assert by_id.loc["3650", "title"] == "小猫钓鱼" and by_id.loc["3650", "categories"] == "体育|户外运动"
    assert by_id.loc["3650", "text"] == "今天去河边 #钓鱼"
    assert by_id.loc["1378", "title"] == "张教练：我们开始 吧！"
    assert by_id.loc["42", "title"].endswith("…") and len(by_id.loc["42", "title"]) == 64
    assert by_id.loc["10727", "title"] == "video 10727" and by_id.loc["10727", "categories"] == ""


def test_kuairec_threshold_and_data_subfolder(kuairec_dir: Path, tmp_path: Path) -> None:
    outer = tmp_path / "KuaiRec 2.0"
    outer.mkdir()
    (outer / "data").symlink_to(kuairec_dir, target_is_directory=True)
    strict = load_kuairec(outer, watch_ratio_threshold=3.0)
    loose = load_kuairec(kuairec_dir, watch_ratio_threshold=1.0)
    assert strict.interactions["label"].sum() < loose.interactions["label"].sum()


# --- generic CSV / Parquet --------------------------------------------------------------------------------


def _write_generic(folder: Path, fmt: str = "csv") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    inter = pd.DataFrame(
        {
            "uid": ["u1", "u1", "u1", "u2", "u2", "u3"],
            "movie": ["007", "010", "007", "010", "020", "020"],
            "when": [
                "2021-01-01T00:00:00Z",
                "2021-01-02T00:00:00+01:00",
                "2021-01-03 12:00:00",
                "2021-01-01",
                "2021-01-05T10:00:00.900",
                "2021-01-06T00:00:00Z",
            ],
            "stars": [5.0, 2.0, 4.0, 3.5, 4.5, 1.0],
        }
    )
    items = pd.DataFrame(
        {
            "movie": ["007", "010", "020"],
            "name": ["Spy, The", "Ten", "Twenty"],
            "categories": ["A|B", "", "C"],
        }
    )
    if fmt == "csv":
        inter.to_csv(folder / "interactions.csv", index=False)
        items.to_csv(folder / "items.csv", index=False)
    else:
        inter["when"] = pd.to_datetime(inter["when"], format="ISO8601", utc=True)
        inter.to_parquet(folder / "interactions.parquet")
        items["categories"] = [["A", "B"], [], ["C"]]
        items.to_parquet(folder / "items.parquet")


def test_generic_csv_column_mapping_and_iso_timestamps(tmp_path: Path) -> None:
    _write_generic(tmp_path / "g")
    columns = {"user_id": "uid", "item_id": "movie", "timestamp": "when", "rating": "stars", "title": "name"}
    tables = load_generic(tmp_path / "g", columns=columns, label_threshold=4)
    _check_canonical(tables)
    inter = tables.interactions
    assert list(inter["item_id"]) == ["007", "010", "007", "010", "020", "020"]  # leading zeros kept
    assert list(inter["label"]) == [1, 0, 1, 0, 1, 0]
    assert tables.meta["label_rule"] == "stars >= 4.0"
    assert list(inter["timestamp"]) == [
        1609459200,
        1609542000,
        1609675200,
        1609459200,
        1609840800,
        1609891200,
    ]
    assert list(tables.items["categories"]) == ["A|B", "", "C"]
    assert tables.items["title"].iloc[0] == "Spy, The"


def test_generic_parquet_matches_csv(tmp_path: Path) -> None:
    _write_generic(tmp_path / "csv")
    _write_generic(tmp_path / "pq", fmt="parquet")
    columns = {"user_id": "uid", "item_id": "movie", "timestamp": "when", "rating": "stars", "title": "name"}
    a = load_generic(tmp_path / "csv", columns=columns, label_threshold=4)
    b = load_generic(tmp_path / "pq", columns=columns, label_threshold=4)
    assert b.meta["layout"] == "generic-parquet"
    pd.testing.assert_frame_equal(a.interactions, b.interactions)
    pd.testing.assert_frame_equal(a.items, b.items)


def test_generic_defaults_label_column_and_unix_seconds(tmp_path: Path) -> None:
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "interactions.csv").write_text(
        "user_id,item_id,timestamp,label\n1,10,100.7,1\n1,11,200,0\n2,10,50,true\n", encoding="utf-8"
    )
    (folder / "items.csv").write_text(
        'item_id,title,genres\n10,"A, the",x|y\n11,B,\n12,C,z\n', encoding="utf-8"
    )
    tables = load_generic(folder)
    _check_canonical(tables)
    assert list(tables.interactions["timestamp"]) == [100, 200, 50]
    assert list(tables.interactions["label"]) == [1, 0, 1]
    assert tables.interactions["feedback"].isna().all()
    assert list(tables.items["categories"]) == ["x|y", "", "z"]
    assert tables.meta["label_rule"] == "label column label"


def test_generic_timestamp_format(tmp_path: Path) -> None:
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "interactions.csv").write_text(
        "user_id,item_id,timestamp,label\n1,10,05/01/2021 10:00,1\n1,11,06/01/2021 10:00,0\n",
        encoding="utf-8",
    )
    (folder / "items.csv").write_text("item_id,title\n10,A\n11,B\n", encoding="utf-8")
    tables = load_generic(folder, timestamp_format="%d/%m/%Y %H:%M")
    assert list(tables.interactions["timestamp"]) == [1609840800, 1609927200]

"""Bad inputs: each gives a one-line CtrSinkError naming the file/column/option, and `prepare` leaves nothing behind."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from ctrsink.data import load_sample_set, prepare
from ctrsink.errors import CtrSinkError

GOOD_LOG = "user_id,item_id,timestamp,label\n" + "".join(
    f"u{u},i{(u + k) % 5},{1000 + 10 * k + u},{(u + k) % 2}\n" for u in range(4) for k in range(6)
)
GOOD_ITEMS = "item_id,title,genres\n" + "".join(f"i{k},Title {k},G{k}\n" for k in range(5))


def _folder(
    tmp_path: Path, log: str | bytes | None = GOOD_LOG, items: str | bytes | None = GOOD_ITEMS
) -> Path:
    folder = tmp_path / "src"
    folder.mkdir(exist_ok=True)
    for name, content in (("interactions.csv", log), ("items.csv", items)):
        if content is None:
            continue
        data = content.encode("utf-8") if isinstance(content, str) else content
        (folder / name).write_bytes(data)
    return folder


def _fails(tmp_path: Path, source: str, path: Path, *needles: str, **options: Any) -> str:
    """Run prepare, expect a CtrSinkError mentioning every needle, and check `out` was never created."""
    out = tmp_path / "work" / "out"
    with pytest.raises(CtrSinkError) as info:
        prepare(source, path, out, **options)
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, (needle, message)
    assert not out.exists() and not (tmp_path / "work").exists()
    return message


def test_sanity_good_input_works(tmp_path: Path) -> None:
    manifest = prepare("csv", _folder(tmp_path), tmp_path / "out", split_fractions=(0.5, 0.25, 0.25))
    assert sum(manifest["sizes"].values()) == 20


CASES: dict[str, tuple[Callable[[Path], Path], tuple[str, ...], dict[str, Any]]] = {
    "missing items file": (lambda t: _folder(t, items=None), ("items.csv", "not found"), {}),
    "missing interactions file": (lambda t: _folder(t, log=None), ("interactions.csv", "not found"), {}),
    "missing column": (
        lambda t: _folder(t, log="user_id,item_id,label\nu1,i1,1\n"),
        ("interactions.csv", "missing column(s) timestamp", "found columns: user_id, item_id, label"),
        {},
    ),
    "mapped column absent": (
        lambda t: _folder(t),
        ("interactions.csv", "uid"),
        {"columns": {"user_id": "uid"}},
    ),
    "wrong separator": (
        lambda t: _folder(t, log=GOOD_LOG.replace(",", ";")),
        ("interactions.csv", "found columns: user_id;item_id;timestamp;label", "separator"),
        {},
    ),
    "utf-16 file": (lambda t: _folder(t, log=GOOD_LOG.encode("utf-16")), ("interactions.csv", "UTF-16"), {}),
    "invalid utf-8 bytes": (
        lambda t: _folder(t, items=GOOD_ITEMS.encode() + b"i9,Caf\xe9 \xff\xfe,G\n"),
        ("items.csv", "utf-8", "UTF-8"),
        {},
    ),
    "unparseable timestamp": (
        lambda t: _folder(t, log=GOOD_LOG + "u1,i1,yesterday,1\n"),
        ("interactions.csv", "column timestamp", "'yesterday'"),
        {},
    ),
    "empty log": (
        lambda t: _folder(t, log="user_id,item_id,timestamp,label\n"),
        ("interactions.csv", "empty"),
        {},
    ),
    "zero-byte log": (lambda t: _folder(t, log=""), ("interactions.csv", "empty"), {}),
    "only single-interaction users": (
        lambda t: _folder(t, log="user_id,item_id,timestamp,label\nu1,i1,5,1\nu2,i2,6,0\nu3,i1,7,1\n"),
        ("no user has an interaction", "interactions.csv"),
        {},
    ),
    "label 2": (
        lambda t: _folder(t, log=GOOD_LOG + "u1,i1,99999,2\n"),
        ("interactions.csv", "column label", "0 or 1", "2"),
        {},
    ),
    "missing user id": (
        lambda t: _folder(t, log=GOOD_LOG + ",i1,99999,1\n"),
        ("interactions.csv", "column user_id", "missing"),
        {},
    ),
    "rating without threshold": (
        lambda t: _folder(t, log="user_id,item_id,timestamp,rating\nu1,i1,1,4\nu1,i2,2,3\n"),
        ("interactions.csv", "label_threshold"),
        {},
    ),
    "bad timestamp_format": (
        lambda t: _folder(t),
        ("interactions.csv", "timestamp", "%d/%m/%Y"),
        {"timestamp_format": "%d/%m/%Y"},
    ),
    "unknown canonical column": (lambda t: _folder(t), ("columns", "'usr'"), {"columns": {"usr": "u"}}),
    "path is not a folder": (lambda t: t / "nowhere", ("nowhere", "not a folder"), {}),
    "unknown option": (
        lambda t: _folder(t),
        ("watch_ratio_threshold", "--source csv"),
        {"watch_ratio_threshold": 2},
    ),
    "bad history_mode": (lambda t: _folder(t), ("history_mode", "'both'"), {"history_mode": "both"}),
    "bad max_history": (lambda t: _folder(t), ("max_history",), {"max_history": 0}),
    "split_fractions leave a split empty": (
        lambda t: _folder(t),
        ("split_fractions", "test"),
        {"split_fractions": (0.99, 0.01, 0.0)},
    ),
    "split_fractions do not sum to 1": (
        lambda t: _folder(t),
        ("split_fractions",),
        {"split_fractions": (0.8, 0.1, 0.3)},
    ),
    "label_threshold not a number": (
        lambda t: _folder(t),
        ("label_threshold", "'high'"),
        {"label_threshold": "high"},
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_generic_bad_input(tmp_path: Path, case: str) -> None:
    make, needles, options = CASES[case]
    _fails(tmp_path, "csv", make(tmp_path), *needles, **options)


def test_unknown_source(tmp_path: Path) -> None:
    _fails(tmp_path, "lastfm", _folder(tmp_path), "--source", "'lastfm'", "movielens, kuairec, csv")


def test_movielens_bad_inputs(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    _fails(tmp_path, "movielens", empty, "u.data", "ratings*.dat", "ratings.csv")
    ml1m = tmp_path / "ml1m"
    ml1m.mkdir()
    (ml1m / "ratings.dat").write_text("1::10::5::978300760\n1::11::3::978300761\n", encoding="latin-1")
    _fails(tmp_path, "movielens", ml1m, "movies.dat", "not found")
    (ml1m / "movies.dat").write_text("10::A (1990)::Drama\n11::B (1991)\n", encoding="latin-1")
    _fails(tmp_path, "movielens", ml1m, "movies.dat", "line 2", "3 `::`-separated")
    ml100k = tmp_path / "ml100k"
    ml100k.mkdir()
    (ml100k / "u.data").write_text("1,10,5,881250949\n", encoding="latin-1")
    _fails(tmp_path, "movielens", ml100k, "u.data", "tab-separated")
    latest = tmp_path / "latest"
    latest.mkdir()
    (latest / "ratings.csv").write_bytes("userId,movieId,rating,timestamp\n1,10,4.5,1\n".encode("utf-16"))
    (latest / "movies.csv").write_text("movieId,title,genres\n10,A,Drama\n", encoding="utf-8")
    _fails(tmp_path, "movielens", latest, "ratings.csv", "UTF-16")
    (latest / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,10,4.5,1\n", encoding="utf-8")
    _fails(tmp_path, "movielens", latest, "rating_threshold", rating_threshold="four")
    (latest / "ratings.csv").write_text("userId,movieId,stars,timestamp\n1,10,4.5,1\n", encoding="utf-8")
    _fails(tmp_path, "movielens", latest, "ratings.csv", "rating")


def test_kuairec_bad_inputs(tmp_path: Path, kuairec_dir: Path) -> None:
    _fails(tmp_path, "kuairec", kuairec_dir, "matrix", "'huge'", matrix="huge")
    _fails(tmp_path, "kuairec", kuairec_dir, "big_matrix.csv", "not found", matrix="big")
    caption = kuairec_dir / "kuairec_caption_category.csv"
    text = caption.read_text(encoding="utf-8")
    caption.write_text(text + "99,UNKNOWN,broken\n", encoding="utf-8")
    _fails(tmp_path, "kuairec", kuairec_dir, "kuairec_caption_category.csv", "3 fields")
    caption.unlink()
    _fails(tmp_path, "kuairec", kuairec_dir, "kuairec_caption_category.csv", "not found")
    matrix = kuairec_dir / "small_matrix.csv"
    caption.write_text(text, encoding="utf-8")
    pd.read_csv(matrix).drop(columns="watch_ratio").to_csv(matrix, index=False)
    _fails(tmp_path, "kuairec", kuairec_dir, "small_matrix.csv", "watch_ratio")


def test_failed_prepare_keeps_previous_output(tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = prepare("csv", _folder(tmp_path), out, split_fractions=(0.5, 0.25, 0.25))
    (tmp_path / "src" / "interactions.csv").write_text(GOOD_LOG + "u1,i1,later,1\n", encoding="utf-8")
    with pytest.raises(CtrSinkError, match="timestamp"):
        prepare("csv", tmp_path / "src", out)
    assert load_sample_set(out).manifest["hash"] == first["hash"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]


def test_out_that_is_not_a_prepare_output_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me", encoding="utf-8")
    with pytest.raises(CtrSinkError, match="--out .*mine.* not a `ctrsink prepare` output"):
        prepare("csv", _folder(tmp_path), out)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    a_file = tmp_path / "file.parquet"
    a_file.write_text("x", encoding="utf-8")
    with pytest.raises(CtrSinkError, match="file.parquet"):
        prepare("csv", _folder(tmp_path), a_file)
    assert a_file.read_text(encoding="utf-8") == "x"


def test_load_sample_set_errors(tmp_path: Path) -> None:
    with pytest.raises(CtrSinkError, match="nothing.*not found"):
        load_sample_set(tmp_path / "nothing")
    with pytest.raises(CtrSinkError, match="manifest.json"):
        load_sample_set(tmp_path)
    out = tmp_path / "out"
    prepare("csv", _folder(tmp_path), out, split_fractions=(0.5, 0.25, 0.25))
    (out / "test.parquet").unlink()
    with pytest.raises(CtrSinkError, match="test.parquet"):
        load_sample_set(out)
    (out / "manifest.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(CtrSinkError, match="manifest.json.*JSON"):
        load_sample_set(out)

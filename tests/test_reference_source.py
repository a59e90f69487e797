"""`prepare --source reference`: the reference code's sample files (CSV, JSONL, JSON, Parquet) become our splits
row for row, train and evaluate here, and bad rows fail with one line naming file, row and column."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from builders import CATS, TITLES

from ctrsink.cli import main as cli_main
from ctrsink.config import load_config
from ctrsink.data import load_sample_set, prepare
from ctrsink.errors import CtrSinkError
from ctrsink.predict import evaluate
from ctrsink.train import train

SIZES = {"train": 96, "valid": 41, "test": 37}  # valid/test odd on purpose
TINY = ["epochs=1", "num_behaviors=4", "batch_size=16", "eval_batch_size=32"]


def reference_frame(n: int, seed: int, with_ids: bool = True) -> pd.DataFrame:
    """Rows in the reference's sample format; the label follows the target's genre overlap with liked items."""
    rng = np.random.default_rng(seed)
    rows = []
    for r in range(n):
        pos = rng.choice(len(TITLES), size=int(rng.integers(0, 5)), replace=False).tolist()
        neg = rng.choice(len(TITLES), size=int(rng.integers(1, 4)), replace=False).tolist()
        target = int(rng.integers(len(TITLES)))
        liked = {g for i in pos for g in CATS[i].split("|")}
        row = {
            "positive_movie_titles": [TITLES[i] for i in pos],
            "negative_movie_titles": [TITLES[i] for i in neg],
            "title": TITLES[target],
            "genres": CATS[target],
            "click_label": int(bool(liked & set(CATS[target].split("|")))),
            "user_id": f"u{r % 7}",
            "timestamp": 1_000_000_000 + 3600 * r,
            "rating": float(rng.choice([1.5, 3.0, 4.0, 5.0])),
        }
        if with_ids:
            row |= {
                "movie_id": 100 + target,
                "positive_movie_ids": [100 + i for i in pos],
                "negative_movie_ids": [100 + i for i in neg],
            }
        rows.append(row)
    return pd.DataFrame(rows)


LIST_COLUMNS = ("positive_movie_titles", "negative_movie_titles", "positive_movie_ids", "negative_movie_ids")


def write(frame: pd.DataFrame, path: Path, literal: str = "python") -> None:
    """Write one split; CSV lists as Python (or JSON) literals, JSON lists as JSON text, the rest as real lists."""
    suffix = path.suffix
    if suffix == ".csv":
        as_text = repr if literal == "python" else json.dumps
        frame = frame.assign(**{c: frame[c].map(as_text) for c in LIST_COLUMNS if c in frame})
        frame.to_csv(path, index=False)
    elif suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True, force_ascii=False)
    elif suffix == ".json":
        frame = frame.assign(**{c: frame[c].map(json.dumps) for c in LIST_COLUMNS if c in frame})
        frame.to_json(path, orient="records", force_ascii=False)
    else:
        frame.to_parquet(path, index=False)


def reference_dir(root: Path, suffix: str, with_ids: bool = True, literal: str = "python") -> Path:
    folder = root / f"ref_{suffix.strip('.')}_{int(with_ids)}_{literal}"
    folder.mkdir(parents=True, exist_ok=True)
    for i, (split, n) in enumerate(SIZES.items()):
        write(reference_frame(n, seed=i, with_ids=with_ids), folder / f"{split}{suffix}", literal)
    return folder


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("reference")
    out = root / "samples"
    assert (
        cli_main(
            [
                "prepare",
                "--source",
                "reference",
                "--path",
                str(reference_dir(root, ".csv")),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    return out


def test_splits_and_rows_are_kept(prepared: Path) -> None:
    splits, items, manifest = load_sample_set(prepared)
    assert manifest["source"] == "reference" and manifest["sizes"] == SIZES
    assert manifest["loader"]["item_key"] == "id columns" and manifest["history_fields"] == ["pos", "neg"]
    items = items.to_pandas()
    offset = 0
    for i, (split, n) in enumerate(SIZES.items()):
        frame = splits[split].to_pandas()
        ref = reference_frame(n, seed=i)
        assert frame["sample_id"].tolist() == list(
            range(offset, offset + n)
        )  # file order, ids unique across splits
        offset += n
        assert items["title"].to_numpy()[frame["item_idx"]].tolist() == ref["title"].tolist()
        assert items["item_id"].to_numpy()[frame["item_idx"]].tolist() == ref["movie_id"].astype(str).tolist()
        assert frame["label"].tolist() == ref["click_label"].tolist()
        assert frame["user_id"].tolist() == ref["user_id"].tolist()
        for field, column in (("pos", "positive_movie_titles"), ("neg", "negative_movie_titles")):
            got = [items["title"].to_numpy()[list(x)].tolist() for x in frame[f"{field}_item_idx"]]
            assert got == ref[column].tolist()
            assert all(set(x) <= {int(field == "pos")} for x in frame[f"{field}_label"])
    genres = dict(zip(items["title"], items["categories"]))
    assert genres[TITLES[3]] == CATS[3] or genres[TITLES[3]] == ""  # only targets carry genres


@pytest.mark.parametrize(
    ("suffix", "literal"),
    [(".jsonl", "python"), (".json", "python"), (".parquet", "python"), (".csv", "json")],
)
def test_every_format_gives_the_same_samples(
    prepared: Path, tmp_path: Path, suffix: str, literal: str
) -> None:
    out = tmp_path / "samples"
    prepare("reference", reference_dir(tmp_path, suffix, literal=literal), out)
    want, got = load_sample_set(prepared), load_sample_set(out)
    for split in SIZES:
        assert got.splits[split].equals(want.splits[split]), (suffix, split)
    assert got.items.equals(want.items)


def test_titles_are_the_items_without_ids_and_a_missing_test_file_reuses_valid(tmp_path: Path) -> None:
    folder = reference_dir(tmp_path, ".parquet", with_ids=False)
    (folder / "test.parquet").unlink()
    (folder / "valid.parquet").rename(folder / "validation.parquet")
    manifest = prepare("reference", folder, tmp_path / "out", max_history=2)
    splits, items, _ = load_sample_set(tmp_path / "out")
    assert manifest["loader"]["item_key"] == "title" and manifest["split_rule"]["test_is_valid"]
    assert splits["test"].equals(splits["valid"]) and manifest["max_history"] == 2
    assert items.column("item_id").to_pylist() == items.column("title").to_pylist()
    assert max(len(x) for x in splits["train"].column("pos_item_idx").to_pylist()) == 2


def test_reference_files_train_and_evaluate(prepared: Path, tmp_path: Path, one_thread: None) -> None:
    final = train(prepared, load_config(None, TINY), tmp_path / "run")
    assert final["test"]["n"] == SIZES["test"] and final["valid"]["n"] == SIZES["valid"]
    again = evaluate(tmp_path / "run", split="test")
    assert again["auc"] == pytest.approx(final["test"]["auc"], abs=1e-6)


def _corrupt(folder: Path, split: str, row: int, column: str, value: object) -> None:
    path = folder / f"{split}.csv"
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame.loc[row, column] = value
    frame.to_csv(path, index=False)


@pytest.mark.parametrize(
    ("column", "value", "expect"),
    [
        ("positive_movie_titles", "['Toy Story (1995)', 'Heat", "not a JSON or Python list"),
        ("positive_movie_titles", "[__import__('os').system('true')]", "not a JSON or Python list"),
        ("negative_movie_titles", "{'a': 1}", "expected a list"),
        ("title", "", "missing title"),
        ("positive_movie_ids", "[1, 2, 3, 4, 5, 6, 7]", "ids for the"),
        ("movie_id", "101", "names"),
    ],
)
def test_bad_rows_name_file_row_and_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], column: str, value: str, expect: str
) -> None:
    folder = reference_dir(tmp_path, ".csv")
    row = 5 if column != "movie_id" else int(np.flatnonzero(reference_frame(41, 1)["movie_id"] != 101)[0])
    _corrupt(folder, "valid", row, column, value)
    out = tmp_path / "out"
    assert cli_main(["prepare", "--source", "reference", "--path", str(folder), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert (
        "valid.csv" in err and f"data row {row + 1}" in err and f"column {column}" in err and expect in err
    ), err
    assert not out.exists()


@pytest.mark.parametrize(
    ("setup", "expect"),
    [
        (lambda f: _corrupt(f, "train", 2, "click_label", "2"), "click_label"),
        (lambda f: (f / "valid.csv").unlink(), "no valid file"),
        (
            lambda f: pd.read_csv(f / "train.csv").drop(columns="title").to_csv(f / "train.csv", index=False),
            "title",
        ),
        (lambda f: (f / "test.jsonl").write_text('{"title": "x"}\nnot json\n'), "several test files"),
    ],
)
def test_bad_files_are_one_line_errors(tmp_path: Path, setup, expect: str) -> None:
    folder = reference_dir(tmp_path, ".csv")
    setup(folder)
    with pytest.raises(CtrSinkError, match=expect) as info:
        prepare("reference", folder, tmp_path / "out")
    assert "\n" not in str(info.value)


def test_bad_jsonl_line_and_inapplicable_options(tmp_path: Path) -> None:
    folder = reference_dir(tmp_path, ".jsonl")
    lines = (folder / "test.jsonl").read_text().splitlines()
    (folder / "test.jsonl").write_text("\n".join(lines[:3] + ["{not json"] + lines[3:]) + "\n")
    with pytest.raises(CtrSinkError, match=r"test.jsonl: line 4: not valid JSON"):
        prepare("reference", folder, tmp_path / "out")
    with pytest.raises(CtrSinkError, match="split_fractions do not apply to --source reference"):
        prepare("reference", folder, tmp_path / "out", split_fractions=(0.5, 0.25, 0.25))


def test_list_cells_in_every_written_form() -> None:
    from ctrsink.data.reference_files import parse_list

    def parse(value: object) -> list[str]:
        return parse_list(value, "f.csv", 0, "c")

    assert parse('["Toy Story (1995)", "Heat (1995)"]') == ["Toy Story (1995)", "Heat (1995)"]
    assert parse("('Usual Suspects, The (1995)',)") == ["Usual Suspects, The (1995)"]
    assert parse("Toy Story (1995)|SEP|Usual Suspects, The (1995)") == [
        "Toy Story (1995)",
        "Usual Suspects, The (1995)",
    ]
    assert parse("Toy Story, Heat") == ["Toy Story", "Heat"]  # the reference's comma fallback
    assert parse(np.array([7.0, 12.0])) == ["7", "12"] and parse(float("nan")) == [] and parse("  ") == []
    with pytest.raises(CtrSinkError, match=r"f.csv: data row 1, column c: list entries"):
        parse("[['nested']]")

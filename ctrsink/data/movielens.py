"""MovieLens loaders: ml-100k, ml-1m (also its partial gzip ratings), ml-latest(-small)/20m/25m; layout from the files."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
import pandas as pd

from ctrsink.data.schema import (
    CATEGORY_SEP,
    LogTables,
    check_threshold,
    drop_unknown_items,
    make_interactions,
    make_items,
    read_csv_checked,
    require_columns,
    to_feedback,
    to_id_strings,
    to_unix_seconds,
)
from ctrsink.errors import CtrSinkError

# Order of the 19 genre flags in u.item (as listed in u.genre), used when u.genre itself is absent.
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
NO_GENRES = "(no genres listed)"
LOOKED_FOR = (
    "u.data + u.item (ml-100k), ratings*.dat[.gz] + movies.dat (ml-1m), ratings.csv + movies.csv (ml-latest)"
)


def load_movielens(path: str | Path, rating_threshold: float = 4.0) -> LogTables:
    """Load a MovieLens folder; label = rating >= `rating_threshold`."""
    folder = Path(path)
    threshold = check_threshold(rating_threshold, "rating_threshold")
    if not folder.is_dir():
        raise CtrSinkError(f"{folder}: not a folder (expected a MovieLens folder with {LOOKED_FOR})")
    if (folder / "u.data").is_file():
        layout, (ratings, items, files) = "ml-100k", _read_100k(folder)
    elif (folder / "ratings.csv").is_file():
        layout, (ratings, items, files) = "ml-latest", _read_latest(folder)
    elif _dat_ratings_file(folder) is not None:
        layout, (ratings, items, files) = "ml-1m", _read_1m(folder)
    else:
        raise CtrSinkError(f"{folder}: no MovieLens layout found; looked for {LOOKED_FOR}")

    ratings_file = files[0]
    feedback = to_feedback(ratings["rating"], ratings_file, "rating")
    interactions = make_interactions(
        to_id_strings(ratings["user_id"], ratings_file, "user id"),
        to_id_strings(ratings["item_id"], ratings_file, "movie id"),
        to_unix_seconds(ratings["timestamp"], ratings_file, "timestamp"),
        feedback,
        (feedback >= threshold).astype(np.int8),
        ratings_file,
    )
    interactions, unknown = drop_unknown_items(interactions, items)
    meta = {
        "source": "movielens",
        "layout": layout,
        "path": str(folder),
        "files": files,
        "label_rule": f"rating >= {threshold}",
        "rating_threshold": threshold,
        "dropped": {"unknown_item": unknown},
    }
    return LogTables(interactions, items, meta)


def _read_100k(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    data_file, item_file = folder / "u.data", folder / "u.item"
    ratings = read_csv_checked(
        data_file, str(data_file), sep="\t", header=None, names=["user_id", "item_id", "rating", "timestamp"]
    )
    _check_filled(ratings, str(data_file), "tab-separated")
    genres = list(ML100K_GENRES)
    genre_file = folder / "u.genre"
    if genre_file.is_file():
        table = _read_latin1_table(genre_file, 2)
        genres = [name for name, _ in sorted(zip(table[0], table[1].astype(int)), key=lambda p: p[1])]
    table = _read_latin1_table(item_file, 5 + len(genres))
    flags = table.iloc[:, 5:].astype(int).to_numpy(dtype=bool)
    names = np.array(genres, dtype=object)
    categories = pd.Series([CATEGORY_SEP.join(names[row]) for row in flags])
    items = make_items(table[0], table[1], categories, None, str(item_file))
    return ratings, items, [str(data_file), str(item_file)]


def _read_1m(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    ratings_file = _dat_ratings_file(folder)
    assert ratings_file is not None
    movies_file = folder / "movies.dat"
    ratings = _read_dat(ratings_file, ["user_id", "item_id", "rating", "timestamp"])
    movies = _read_dat(movies_file, ["item_id", "title", "genres"])
    items = make_items(
        movies["item_id"], movies["title"], movies["genres"].fillna(""), None, str(movies_file)
    )
    return ratings, items, [str(ratings_file), str(movies_file)]


def _read_latest(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    ratings_file, movies_file = folder / "ratings.csv", folder / "movies.csv"
    ratings = read_csv_checked(ratings_file, str(ratings_file), dtype={"userId": str, "movieId": str})
    require_columns(ratings, ("userId", "movieId", "rating", "timestamp"), str(ratings_file))
    ratings = ratings.rename(columns={"userId": "user_id", "movieId": "item_id"})
    movies = read_csv_checked(movies_file, str(movies_file), dtype=str, keep_default_na=False)
    require_columns(movies, ("movieId", "title", "genres"), str(movies_file))
    genres = movies["genres"].where(movies["genres"] != NO_GENRES, "")
    items = make_items(movies["movieId"], movies["title"], genres, None, str(movies_file))
    return ratings, items, [str(ratings_file), str(movies_file)]


def _dat_ratings_file(folder: Path) -> Path | None:
    """ratings.dat, else the one ratings*.dat / ratings*.dat.gz (e.g. a partial gzip copy)."""
    if (folder / "ratings.dat").is_file():
        return folder / "ratings.dat"
    found = sorted(p for p in folder.glob("ratings*.dat*") if p.name.endswith((".dat", ".dat.gz")))
    if len(found) > 1:
        raise CtrSinkError(f"{folder}: several ratings files ({', '.join(p.name for p in found)}); keep one")
    return found[0] if found else None


def _decode(path: Path) -> tuple[str, str]:
    """File text as UTF-8 if valid, else Latin-1 (ml-100k/ml-1m are Latin-1; Latin-1 never fails)."""
    if not path.is_file():
        raise CtrSinkError(f"{path}: file not found")
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise CtrSinkError(f"{path}: not a readable gzip file ({exc})") from None
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return data.decode("latin-1"), "latin-1"


def _read_dat(path: Path, names: list[str]) -> pd.DataFrame:
    # `::`-separated: swap the separator for a tab so pandas' fast C parser can split (no regex engine).
    text, _ = _decode(path)
    if "\t" in text:
        raise CtrSinkError(f"{path}: unexpected tab characters; expected `::`-separated fields")
    try:
        df = pd.read_csv(
            io.StringIO(text.replace("::", "\t")),
            sep="\t",
            header=None,
            names=names,
            dtype=str,
            quoting=3,  # csv.QUOTE_NONE: titles may contain quote characters
            keep_default_na=False,
        )
    except pd.errors.EmptyDataError:
        raise CtrSinkError(f"{path}: the file is empty") from None
    except pd.errors.ParserError as exc:
        raise CtrSinkError(f"{path}: expected {len(names)} `::`-separated fields per line ({exc})") from None
    _check_filled(df, str(path), "`::`-separated")
    return df


def _read_latin1_table(path: Path, n_fields: int) -> pd.DataFrame:
    text, _ = _decode(path)
    rows = [line.split("|") for line in text.splitlines() if line.strip()]
    bad = [i for i, row in enumerate(rows) if len(row) < n_fields]
    if bad:
        raise CtrSinkError(f"{path}: line {bad[0] + 1} has fewer than {n_fields} `|`-separated fields")
    return pd.DataFrame([row[:n_fields] for row in rows])


def _check_filled(df: pd.DataFrame, file: str, how: str) -> None:
    """A wrong separator shows up as empty trailing fields; report it as such."""
    if df.empty:
        raise CtrSinkError(f"{file}: the file is empty")
    last = df.columns[-1]
    empty = df[last].isna() | (df[last].astype(str) == "")
    if empty.any():
        row = int(np.flatnonzero(empty.to_numpy())[0]) + 1
        raise CtrSinkError(f"{file}: line {row} does not have {len(df.columns)} {how} fields")

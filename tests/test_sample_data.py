"""Tests for the bundled synthetic sample data (sample_data/generate.py and its committed output)."""

from __future__ import annotations

import csv
import importlib.util
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "sample_data" / "generate.py"
DATA = ROOT / "sample_data" / "synthetic"
FILES = ("interactions.csv", "items.csv")


def _load_generator() -> ModuleType:
    name = "ctrsink_sample_data_generate"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses need the module registered
    spec.loader.exec_module(module)
    return module


gen = _load_generator()


@pytest.fixture(scope="module")
def items() -> dict[int, tuple[str, tuple[str, ...]]]:
    with open(DATA / "items.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return {int(r["item_id"]): (r["title"], tuple(r["genres"].split("|"))) for r in rows}


@pytest.fixture(scope="module")
def interactions() -> list[tuple[int, int, int, int]]:
    with open(DATA / "interactions.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return [(int(r["user_id"]), int(r["item_id"]), int(r["timestamp"]), int(r["label"])) for r in rows]


@pytest.fixture(scope="module")
def by_user(interactions: list[tuple[int, int, int, int]]) -> dict[int, list[tuple[int, int, int, int]]]:
    out: dict[int, list[tuple[int, int, int, int]]] = defaultdict(list)
    for row in interactions:
        out[row[0]].append(row)
    return out


def test_regeneration_is_byte_identical(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path), "--seed", "0"],
        check=True,
        cwd=tmp_path,
        capture_output=True,
    )
    for name in FILES:
        assert (tmp_path / name).read_bytes() == (DATA / name).read_bytes(), name
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FILES)  # no temp files left behind


def test_other_seed_differs() -> None:
    items0, inter0 = gen.generate(0)
    items1, inter1 = gen.generate(1)
    assert gen.interactions_csv(inter0) != gen.interactions_csv(inter1)
    assert gen.items_csv(items0) == (DATA / "items.csv").read_text(encoding="utf-8")


def test_format() -> None:
    for name, header in (
        ("interactions.csv", "user_id,item_id,timestamp,label"),
        ("items.csv", "item_id,title,genres"),
    ):
        raw = (DATA / name).read_bytes()
        assert b"\r" not in raw and raw.endswith(b"\n")
        assert raw.decode("utf-8").split("\n", 1)[0] == header
    lines = (DATA / "interactions.csv").read_text(encoding="utf-8").splitlines()[1:]
    assert all(re.fullmatch(r"\d+,\d+,\d{10},[01]", line) for line in lines)


def test_sizes_and_label_rate(
    items: dict[int, tuple[str, tuple[str, ...]]], interactions: list[tuple[int, int, int, int]]
) -> None:
    assert len(items) == 600 and sorted(items) == list(range(1, 601))
    assert 5000 <= len(interactions) <= 8000
    users = {u for u, _, _, _ in interactions}
    assert 250 <= len(users) <= 400
    assert {i for _, i, _, _ in interactions} <= set(items)
    rate = sum(y for *_, y in interactions) / len(interactions)
    assert 0.3 <= rate <= 0.5
    assert interactions == sorted(interactions, key=lambda r: (r[0], r[2], r[1]))
    assert len({(u, i) for u, i, _, _ in interactions}) == len(interactions)  # no item shown twice to a user


def test_titles_come_from_genre_lexicons(items: dict[int, tuple[str, tuple[str, ...]]]) -> None:
    titles = [title for title, _ in items.values()]
    assert len(set(titles)) == len(titles)
    n_multi = 0
    for title, genres in items.values():
        assert set(genres) <= set(gen.GENRES) and 1 <= len(genres) <= 2 and len(set(genres)) == len(genres)
        n_multi += len(genres) == 2
        m = re.fullmatch(r"(.+) \((\d{4})\)", title)
        assert m, title
        assert 1960 <= int(m.group(2)) <= 2019
        words = m.group(1).split(" ")
        neutral = [w for w in words if w in gen.NEUTRAL_WORDS]
        content = [w.lower() for w in words if w not in gen.NEUTRAL_WORDS]
        assert len(neutral) <= 1 and 2 <= len(content) <= 3, title
        assert all(w[0].isupper() for w in words), title
        allowed = set().union(*(gen.LEXICONS[g] for g in genres))
        assert set(content) <= allowed, title
        assert any(w in gen.LEXICONS[genres[0]] for w in content), title
    assert 0.1 <= n_multi / len(items) <= 0.3


def test_lexicons_are_disjoint() -> None:
    seen: set[str] = set()
    for genre in gen.GENRES:
        words = set(gen.LEXICONS[genre])
        assert (
            len(words) == 15 and not (words & seen) and not (words & {w.lower() for w in gen.NEUTRAL_WORDS})
        )
        seen |= words


def test_session_structure(by_user: dict[int, list[tuple[int, int, int, int]]]) -> None:
    for rows in by_user.values():
        times = [t for _, _, t, _ in rows]
        sessions = [[times[0]]]
        for a, b in zip(times, times[1:]):
            gap = b - a
            if gap >= 86400:
                assert gap <= 10 * 86400 + 1
                sessions.append([b])
            else:
                assert 60 <= gap <= 1800, gap
                sessions[-1].append(b)
        assert 3 <= len(sessions) <= 5
        assert all(3 <= len(s) <= 8 for s in sessions)


def _recency_condition(
    rows: list[tuple[int, int, int, int]], items: dict[int, tuple[str, tuple[str, ...]]]
) -> list[str]:
    """Independent re-implementation of the label rule's three conditions."""
    out = []
    for k, (_, item, t, _) in enumerate(rows):
        g = set(items[item][1])
        related = [tj for _, ij, tj, yj in rows[:k] if yj == 1 and tj < t and g & set(items[ij][1])]
        if related and t - max(related) <= 2 * 3600:
            out.append("recent")
        elif related:
            out.append("older")
        else:
            out.append("never")
    return out


def test_recency_effect(
    items: dict[int, tuple[str, tuple[str, ...]]], by_user: dict[int, list[tuple[int, int, int, int]]]
) -> None:
    n: dict[str, int] = defaultdict(int)
    pos: dict[str, int] = defaultdict(int)
    for rows in by_user.values():
        for cond, (*_, y) in zip(_recency_condition(rows, items), rows):
            n[cond] += 1
            pos[cond] += y
    assert min(n.values()) >= 500
    rate = {c: pos[c] / n[c] for c in n}
    assert rate["recent"] > rate["older"] + 0.2
    assert rate["older"] > rate["never"] + 0.05
    # the generator's own rule agrees with the independent re-implementation
    genres, inter = gen.load(DATA)
    s = gen.summary(genres, inter)
    assert (s["n_recent"], s["n_older"], s["n_never"]) == (n["recent"], n["older"], n["never"])


def test_time_aware_beats_order_only() -> None:
    genres, inter = gen.load(DATA)
    e = gen.evaluate(gen.build_features(genres, inter))
    assert e["auc_order_only"] >= 0.62
    assert e["auc_time_aware"] - e["auc_order_only"] >= 0.03
    assert e["auc_oracle"] > e["auc_order_only"]

"""Generate the bundled synthetic CTR sample data of ctrsink (generic format).

Run from the repository root::

    python sample_data/generate.py                 # writes sample_data/synthetic/{interactions,items}.csv
    python sample_data/generate.py --report        # ... and prints the learnability report
    python sample_data/generate.py --out DIR --seed 0

Output (byte-identical for a given seed; rows sorted, ``\\n`` line endings, UTF-8):

* ``items.csv`` -- ``item_id,title,genres`` (genres ``|``-joined, primary genre first)
* ``interactions.csv`` -- ``user_id,item_id,timestamp,label`` (integer Unix seconds, label 0/1),
  sorted by ``(user_id, timestamp, item_id)``.

Files are written atomically (temporary file in the target directory, then ``os.replace``).

Planted structure (every constant below is a module-level name; see sample_data/README.md)
-------------------------------------------------------------------------------------------
1. Items (``N_ITEMS`` = 600). The primary genre is drawn uniformly from the 8 ``GENRES``. With
   probability ``P_SECOND_GENRE`` = 0.2 an item has a second, different genre (uniform). The title is
   ``TITLE_WORDS`` = 2 or 3 distinct words from the genres' lexicons (``LEXICONS``, 15 words each, no
   word shared by two genres): all from the primary genre, except that an item with a second genre has
   exactly one word from the second genre's lexicon. With probability ``P_NEUTRAL`` = 0.3 one neutral
   word is added: a prefix from ``NEUTRAL_PREFIX`` ("The", "Return", "Night", "Last") or a suffix from
   ``NEUTRAL_SUFFIX`` ("II", "III"). Words are title-cased and a year uniform in ``YEAR_RANGE`` =
   [1960, 2019] is appended in parentheses, MovieLens style: ``"Laser Orbit Android (1994)"``.
   Titles are unique (a duplicate draw is redrawn).
2. Users (``N_USERS`` = 300). Each user has ``N_FAVOURITES`` = 2 or 3 favourite genres (uniform, no
   repeats) and ``N_SESSIONS`` = 3..5 sessions (uniform). The first session starts at
   ``EPOCH_START`` (2024-01-01T00:00:00Z) plus a uniform offset in [0, ``START_SPREAD_DAYS`` = 120)
   days; consecutive sessions are separated by a gap that is log-uniform in
   [``SESSION_GAP_DAYS`` = 1, 10] days (measured from the last interaction of a session to the first of
   the next). A session has ``SESSION_LEN`` = 3..8 interactions (uniform), consecutive interactions
   ``INTRA_GAP_SECONDS`` = 60..1800 seconds apart (uniform integer, i.e. 1-30 minutes).
   Focus genre: the first session's focus is a uniformly drawn favourite. Between sessions the focus
   stays with probability ``P_FOCUS_STAY`` = 0.8; otherwise it jumps to a different genre -- with
   probability ``P_JUMP_TO_FAVOURITE`` = 0.7 a uniformly drawn favourite other than the current focus,
   else a uniformly drawn genre other than the current focus.
   Shown items: each slot is, with probability ``P_FOCUS_ITEM`` = 0.65, an item carrying the focus genre
   (primary or secondary), otherwise any item; always uniform among the items this user has not been
   shown yet (a user never sees the same item twice).
3. Labels. For a target item i shown to user u at time t, let G(i) be its genre set and
   C = {earlier interactions j of u (t_j < t) with label_j = 1 and G(j) & G(i) non-empty}. Then::

       p(click) = P_RECENT = 0.85   if some j in C has t - t_j <= RECENT_WINDOW_SECONDS (7200 s = 2 h)
                  P_OLDER  = 0.35   elif C is non-empty (all related clicks are older than 2 h)
                  P_NEVER  = 0.20   otherwise (no related click ever)

       label ~ Bernoulli(p(click))

   Because sessions are separated by >= 1 day, the 2-hour window (almost always) means "earlier in the
   current session", while the last few behaviours *in order* at the start of a session belong to the
   previous session, days ago. A model that sees time gaps can therefore beat one that sees only order.

   Tuning note: with the first-draft values (P_RECENT 0.80, P_NEVER 0.10, P_FOCUS_STAY 0.5,
   P_FOCUS_ITEM 0.6) the positive rate was ~0.25 and the time-aware model beat the order-only one by only
   ~0.01 AUC. Raising P_NEVER lifts the positive rate into [0.3, 0.5]; a stickier focus
   (P_FOCUS_STAY 0.8) and a slightly larger focus share (P_FOCUS_ITEM 0.65) make a session's first items
   relate to the previous session's last clicks more often -- exactly the case where "last in order" and
   "recent in time" disagree; P_RECENT 0.85 widens the gap between the two cases.

Random numbers come from ``numpy.random.default_rng(seed)`` in a fixed order: items first, then users in
id order (per user: favourites, session count, start offset, then per session: focus, length, gaps,
shown items and labels interleaved).

Report (``--report``)
---------------------
For each interaction with >= 1 earlier interaction of the same user, features are built from the user's
strictly earlier history; targets are sorted by (timestamp, user_id, item_id), the first 80 % train and
the last 20 % test. A standardised scikit-learn ``LogisticRegression`` is fitted on

* order-only: number of clicked items sharing a genre with the target among the last 3 / last 5 / all
  earlier behaviours, and the fraction of earlier behaviours that are clicks;
* time-aware: the order-only features plus "a related click within 2 h", "a related click within
  24 h" and log(1 + minutes since the last related click) (set to log(1 + 525600), one year, when
  there is none);

and the test AUCs are printed together with the AUC of the true p(click) (the oracle).
``--report-seeds N`` additionally summarises the same AUCs over seeds 0..N-1 (a robustness check).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# --------------------------------------------------------------------------------------------------
# Constants (documented in the module docstring and sample_data/README.md)
# --------------------------------------------------------------------------------------------------
DEFAULT_SEED = 0
DEFAULT_OUT = Path(__file__).resolve().parent / "synthetic"

GENRES: tuple[str, ...] = ("Sci-Fi", "Romance", "Horror", "Comedy", "War", "Western", "Animation", "Crime")
LEXICONS: dict[str, tuple[str, ...]] = {
    "Sci-Fi": (
        "galaxy", "laser", "android", "orbit", "starship", "nebula", "cyborg", "asteroid",
        "planet", "robot", "quantum", "alien", "rocket", "comet", "wormhole",
    ),
    "Romance": (
        "love", "kiss", "heart", "wedding", "bride", "valentine", "romance", "sweetheart",
        "honeymoon", "darling", "embrace", "passion", "promise", "letters", "moonlight",
    ),
    "Horror": (
        "haunted", "ghost", "blood", "curse", "demon", "zombie", "nightmare", "crypt",
        "skull", "witch", "scream", "shadow", "grave", "possession", "vampire",
    ),
    "Comedy": (
        "funny", "crazy", "party", "wacky", "prank", "goofy", "silly", "laugh",
        "clown", "bachelor", "joke", "dumb", "vacation", "hangover", "nerds",
    ),
    "War": (
        "battle", "soldier", "platoon", "bomber", "sniper", "trench", "invasion", "warship",
        "general", "regiment", "frontline", "artillery", "siege", "commando", "victory",
    ),
    "Western": (
        "cowboy", "outlaw", "sheriff", "saloon", "ranch", "frontier", "gunslinger", "stagecoach",
        "lasso", "bandit", "rodeo", "wagon", "canyon", "posse", "mustang",
    ),
    "Animation": (
        "toy", "bunny", "dragon", "puppy", "kitten", "fairy", "cartoon", "bubble",
        "rainbow", "penguin", "panda", "balloon", "jungle", "teddy", "magic",
    ),
    "Crime": (
        "heist", "gangster", "detective", "mafia", "robbery", "cartel", "hitman", "alibi",
        "verdict", "ransom", "smuggler", "mobster", "informant", "felony", "getaway",
    ),
}  # fmt: skip
NEUTRAL_PREFIX: tuple[str, ...] = ("The", "Return", "Night", "Last")
NEUTRAL_SUFFIX: tuple[str, ...] = ("II", "III")
NEUTRAL_WORDS: frozenset[str] = frozenset(NEUTRAL_PREFIX + NEUTRAL_SUFFIX)

# items
N_ITEMS = 600
P_SECOND_GENRE = 0.2
TITLE_WORDS = (2, 3)  # inclusive range of genre words per title
P_NEUTRAL = 0.3
YEAR_RANGE = (1960, 2019)  # inclusive

# users and sessions
N_USERS = 300
N_FAVOURITES = (2, 3)  # inclusive
N_SESSIONS = (3, 5)  # inclusive
EPOCH_START = 1704067200  # 2024-01-01T00:00:00Z
START_SPREAD_DAYS = 120
SESSION_GAP_DAYS = (1.0, 10.0)  # log-uniform
SESSION_LEN = (3, 8)  # inclusive
INTRA_GAP_SECONDS = (60, 1800)  # inclusive, uniform integer
P_FOCUS_STAY = 0.8
P_JUMP_TO_FAVOURITE = 0.7
P_FOCUS_ITEM = 0.65

# labels
RECENT_WINDOW_SECONDS = 2 * 3600
P_RECENT = 0.85
P_OLDER = 0.35
P_NEVER = 0.20

# report
TRAIN_FRACTION = 0.8
DAY_SECONDS = 86400
NO_CLICK_MINUTES = 525600.0  # one year: "time since last related click" when there is none


@dataclass(frozen=True)
class Item:
    item_id: int
    title: str
    genres: tuple[str, ...]  # primary genre first


@dataclass(frozen=True)
class Interaction:
    user_id: int
    item_id: int
    timestamp: int
    label: int


# --------------------------------------------------------------------------------------------------
# Label rule
# --------------------------------------------------------------------------------------------------
def click_probability(
    target_time: int, target_genres: frozenset[str], clicked: Sequence[tuple[int, frozenset[str]]]
) -> float:
    """The planted label rule: p(click) from the user's earlier *clicked* items.

    ``clicked`` holds ``(timestamp, genre set)`` of the user's earlier clicks (any order; only those with
    ``timestamp < target_time`` count).
    """
    related = [ts for ts, genres in clicked if ts < target_time and genres & target_genres]
    if not related:
        return P_NEVER
    if target_time - max(related) <= RECENT_WINDOW_SECONDS:
        return P_RECENT
    return P_OLDER


# --------------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------------
def _randint(rng: np.random.Generator, lo_hi: tuple[int, int]) -> int:
    return int(rng.integers(lo_hi[0], lo_hi[1] + 1))


def build_items(rng: np.random.Generator) -> list[Item]:
    """Draw ``N_ITEMS`` items with genre-bearing, unique titles."""
    items: list[Item] = []
    seen: set[str] = set()
    n_genres = len(GENRES)
    while len(items) < N_ITEMS:
        primary = GENRES[int(rng.integers(n_genres))]
        genres: tuple[str, ...] = (primary,)
        if rng.random() < P_SECOND_GENRE:
            others = [g for g in GENRES if g != primary]
            genres = (primary, others[int(rng.integers(len(others)))])
        n_words = _randint(rng, TITLE_WORDS)
        n_primary = n_words - (len(genres) - 1)
        words = [str(w) for w in rng.choice(LEXICONS[primary], size=n_primary, replace=False)]
        if len(genres) == 2:
            second = LEXICONS[genres[1]][int(rng.integers(len(LEXICONS[genres[1]])))]
            words.insert(int(rng.integers(len(words) + 1)), second)
        words = [w.capitalize() for w in words]
        if rng.random() < P_NEUTRAL:
            k = int(rng.integers(len(NEUTRAL_PREFIX) + len(NEUTRAL_SUFFIX)))
            if k < len(NEUTRAL_PREFIX):
                words.insert(0, NEUTRAL_PREFIX[k])
            else:
                words.append(NEUTRAL_SUFFIX[k - len(NEUTRAL_PREFIX)])
        year = _randint(rng, YEAR_RANGE)
        title = f"{' '.join(words)} ({year})"
        if title in seen:
            continue
        seen.add(title)
        items.append(Item(item_id=len(items) + 1, title=title, genres=genres))
    return items


def _next_focus(rng: np.random.Generator, focus: str, favourites: list[str]) -> str:
    if rng.random() < P_FOCUS_STAY:
        return focus
    fav_others = [g for g in favourites if g != focus]
    if rng.random() < P_JUMP_TO_FAVOURITE and fav_others:
        return fav_others[int(rng.integers(len(fav_others)))]
    others = [g for g in GENRES if g != focus]
    return others[int(rng.integers(len(others)))]


def simulate(rng: np.random.Generator, items: Sequence[Item]) -> list[Interaction]:
    """Simulate every user's sessions, shown items and clicks (see the module docstring)."""
    by_genre = {g: [it.item_id for it in items if g in it.genres] for g in GENRES}
    all_ids = [it.item_id for it in items]
    genres_of = {it.item_id: frozenset(it.genres) for it in items}
    out: list[Interaction] = []
    log_lo, log_hi = math.log(SESSION_GAP_DAYS[0]), math.log(SESSION_GAP_DAYS[1])
    for user_id in range(1, N_USERS + 1):
        n_fav = _randint(rng, N_FAVOURITES)
        favourites = [GENRES[int(i)] for i in rng.choice(len(GENRES), size=n_fav, replace=False)]
        n_sessions = _randint(rng, N_SESSIONS)
        t = EPOCH_START + int(rng.integers(START_SPREAD_DAYS * DAY_SECONDS))
        focus = favourites[int(rng.integers(n_fav))]
        shown: set[int] = set()
        clicked: list[tuple[int, frozenset[str]]] = []
        for s in range(n_sessions):
            if s > 0:
                t += int(round(math.exp(rng.uniform(log_lo, log_hi)) * DAY_SECONDS))
                focus = _next_focus(rng, focus, favourites)
            length = _randint(rng, SESSION_LEN)
            for k in range(length):
                if k > 0:
                    t += _randint(rng, INTRA_GAP_SECONDS)
                pool = by_genre[focus] if rng.random() < P_FOCUS_ITEM else all_ids
                fresh = [i for i in pool if i not in shown]
                if not fresh:  # pragma: no cover - cannot happen with the default sizes
                    fresh = [i for i in all_ids if i not in shown]
                item_id = fresh[int(rng.integers(len(fresh)))]
                shown.add(item_id)
                p = click_probability(t, genres_of[item_id], clicked)
                label = int(rng.random() < p)
                if label:
                    clicked.append((t, genres_of[item_id]))
                out.append(Interaction(user_id, item_id, t, label))
    out.sort(key=lambda r: (r.user_id, r.timestamp, r.item_id))
    return out


def generate(seed: int = DEFAULT_SEED) -> tuple[list[Item], list[Interaction]]:
    """Return ``(items, interactions)`` for ``seed``; deterministic."""
    rng = np.random.default_rng(seed)
    items = build_items(rng)
    interactions = simulate(rng, items)
    return items, interactions


# --------------------------------------------------------------------------------------------------
# Serialisation
# --------------------------------------------------------------------------------------------------
def items_csv(items: Sequence[Item]) -> str:
    """Render ``items.csv`` (titles never contain commas or quotes)."""
    lines = ["item_id,title,genres"]
    for it in sorted(items, key=lambda x: x.item_id):
        assert "," not in it.title and '"' not in it.title
        lines.append(f"{it.item_id:d},{it.title},{'|'.join(it.genres)}")
    return "\n".join(lines) + "\n"


def interactions_csv(interactions: Sequence[Interaction]) -> str:
    """Render ``interactions.csv`` sorted by ``(user_id, timestamp, item_id)``."""
    lines = ["user_id,item_id,timestamp,label"]
    for r in sorted(interactions, key=lambda x: (x.user_id, x.timestamp, x.item_id)):
        lines.append(f"{r.user_id:d},{r.item_id:d},{r.timestamp:d},{r.label:d}")
    return "\n".join(lines) + "\n"


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; data files are meant to be readable
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write(out_dir: Path, items: Sequence[Item], interactions: Sequence[Interaction]) -> None:
    """Write ``items.csv`` and ``interactions.csv`` into ``out_dir`` atomically."""
    _write_atomic(out_dir / "items.csv", items_csv(items))
    _write_atomic(out_dir / "interactions.csv", interactions_csv(interactions))


def load(out_dir: Path) -> tuple[dict[int, frozenset[str]], list[Interaction]]:
    """Read back ``(genres by item_id, interactions)`` from a generic-format directory."""
    genres: dict[int, frozenset[str]] = {}
    with open(out_dir / "items.csv", encoding="utf-8") as fh:
        next(fh)
        for line in fh:
            item_id, _title, g = line.rstrip("\n").split(",")
            genres[int(item_id)] = frozenset(g.split("|"))
    rows: list[Interaction] = []
    with open(out_dir / "interactions.csv", encoding="utf-8") as fh:
        next(fh)
        for line in fh:
            u, i, ts, y = line.rstrip("\n").split(",")
            rows.append(Interaction(int(u), int(i), int(ts), int(y)))
    return genres, rows


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------
ORDER_FEATURES = ("related_clicks_last3", "related_clicks_last5", "related_clicks_all", "pos_fraction")
TIME_FEATURES = ORDER_FEATURES + ("related_click_2h", "related_click_24h", "log_min_since_related_click")


@dataclass
class FeatureTable:
    """Per-target features from the strictly earlier history (targets with >= 1 earlier interaction)."""

    features: dict[str, np.ndarray]
    label: np.ndarray
    oracle: np.ndarray  # true p(click) recomputed with the label rule
    timestamp: np.ndarray
    user_id: np.ndarray
    item_id: np.ndarray


def build_features(genres: dict[int, frozenset[str]], interactions: Sequence[Interaction]) -> FeatureTable:
    """Compute the report's features for every interaction that has an earlier one of the same user."""
    by_user: dict[int, list[Interaction]] = {}
    for r in interactions:
        by_user.setdefault(r.user_id, []).append(r)
    cols: dict[str, list[float]] = {name: [] for name in TIME_FEATURES}
    label: list[int] = []
    oracle: list[float] = []
    ts_col: list[int] = []
    uid: list[int] = []
    iid: list[int] = []
    for user_id in sorted(by_user):
        hist = sorted(by_user[user_id], key=lambda r: (r.timestamp, r.item_id))
        for k in range(1, len(hist)):
            target = hist[k]
            g = genres[target.item_id]
            prev = [r for r in hist[:k] if r.timestamp < target.timestamp]
            if not prev:
                continue
            rel = [int(r.label == 1 and bool(genres[r.item_id] & g)) for r in prev]
            clicked = [(r.timestamp, genres[r.item_id]) for r in prev if r.label == 1]
            rel_times = [r.timestamp for r, x in zip(prev, rel) if x]
            dt = target.timestamp - max(rel_times) if rel_times else None
            cols["related_clicks_last3"].append(sum(rel[-3:]))
            cols["related_clicks_last5"].append(sum(rel[-5:]))
            cols["related_clicks_all"].append(sum(rel))
            cols["pos_fraction"].append(sum(r.label for r in prev) / len(prev))
            cols["related_click_2h"].append(float(dt is not None and dt <= RECENT_WINDOW_SECONDS))
            cols["related_click_24h"].append(float(dt is not None and dt <= DAY_SECONDS))
            minutes = NO_CLICK_MINUTES if dt is None else dt / 60.0
            cols["log_min_since_related_click"].append(math.log1p(minutes))
            label.append(target.label)
            oracle.append(click_probability(target.timestamp, g, clicked))
            ts_col.append(target.timestamp)
            uid.append(user_id)
            iid.append(target.item_id)
    return FeatureTable(
        features={k: np.asarray(v, dtype=float) for k, v in cols.items()},
        label=np.asarray(label, dtype=int),
        oracle=np.asarray(oracle, dtype=float),
        timestamp=np.asarray(ts_col, dtype=np.int64),
        user_id=np.asarray(uid, dtype=np.int64),
        item_id=np.asarray(iid, dtype=np.int64),
    )


def evaluate(table: FeatureTable) -> dict[str, float]:
    """Time-based 80/20 split; test AUC of the oracle, the order-only and the time-aware LR models."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    order = np.lexsort((table.item_id, table.user_id, table.timestamp))
    n_train = int(round(TRAIN_FRACTION * len(order)))
    train, test = order[:n_train], order[n_train:]
    y = table.label
    result = {
        "n_targets": float(len(order)),
        "n_train": float(len(train)),
        "n_test": float(len(test)),
        "test_positive_rate": float(y[test].mean()),
        "auc_oracle": float(roc_auc_score(y[test], table.oracle[test])),
    }
    for name, feats in (("order_only", ORDER_FEATURES), ("time_aware", TIME_FEATURES)):
        x = np.column_stack([table.features[f] for f in feats])
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        model.fit(x[train], y[train])
        result[f"auc_{name}"] = float(roc_auc_score(y[test], model.predict_proba(x[test])[:, 1]))
    return result


def summary(genres: dict[int, frozenset[str]], interactions: Sequence[Interaction]) -> dict[str, float]:
    """Sizes, positive rate, session structure and empirical click rate per recency condition."""
    by_user: dict[int, list[Interaction]] = {}
    for r in interactions:
        by_user.setdefault(r.user_id, []).append(r)
    n_sessions = 0
    cond_n = {"recent": 0, "older": 0, "never": 0}
    cond_pos = {"recent": 0, "older": 0, "never": 0}
    for rows in by_user.values():
        rows = sorted(rows, key=lambda r: r.timestamp)
        n_sessions += 1 + sum(b.timestamp - a.timestamp >= DAY_SECONDS for a, b in zip(rows, rows[1:]))
        clicked: list[tuple[int, frozenset[str]]] = []
        for r in rows:
            p = click_probability(r.timestamp, genres[r.item_id], clicked)
            cond = {P_RECENT: "recent", P_OLDER: "older", P_NEVER: "never"}[p]
            cond_n[cond] += 1
            cond_pos[cond] += r.label
            if r.label:
                clicked.append((r.timestamp, genres[r.item_id]))
    multi = sum(len(g) > 1 for g in genres.values())
    out = {
        "n_interactions": float(len(interactions)),
        "n_users": float(len(by_user)),
        "n_items": float(len(genres)),
        "n_items_two_genres": float(multi),
        "n_sessions": float(n_sessions),
        "positive_rate": float(np.mean([r.label for r in interactions])),
    }
    for cond in ("recent", "older", "never"):
        out[f"n_{cond}"] = float(cond_n[cond])
        out[f"click_rate_{cond}"] = cond_pos[cond] / cond_n[cond] if cond_n[cond] else float("nan")
    return out


def report(out_dir: Path) -> str:
    """Markdown report computed from the files in ``out_dir``."""
    genres, interactions = load(out_dir)
    s = summary(genres, interactions)
    e = evaluate(build_features(genres, interactions))
    lines = [
        "| quantity | value |",
        "|---|---|",
        f"| interactions | {s['n_interactions']:.0f} |",
        f"| users | {s['n_users']:.0f} |",
        f"| items (with a second genre) | {s['n_items']:.0f} ({s['n_items_two_genres']:.0f}) |",
        f"| sessions (split at gaps >= 1 day) | {s['n_sessions']:.0f} |",
        f"| positive rate | {s['positive_rate']:.4f} |",
        f"| click rate, related click within 2 h (n) | {s['click_rate_recent']:.4f} ({s['n_recent']:.0f}) |",
        f"| click rate, only older related clicks (n) | {s['click_rate_older']:.4f} ({s['n_older']:.0f}) |",
        f"| click rate, no related click (n) | {s['click_rate_never']:.4f} ({s['n_never']:.0f}) |",
        f"| report targets: train / test | {e['n_train']:.0f} / {e['n_test']:.0f} |",
        f"| test positive rate | {e['test_positive_rate']:.4f} |",
        f"| test AUC, oracle p(click) | {e['auc_oracle']:.4f} |",
        f"| test AUC, LR order-only | {e['auc_order_only']:.4f} |",
        f"| test AUC, LR time-aware | {e['auc_time_aware']:.4f} |",
        f"| time-aware minus order-only | {e['auc_time_aware'] - e['auc_order_only']:+.4f} |",
    ]
    return "\n".join(lines)


def robustness(n_seeds: int) -> str:
    """Markdown summary of the report AUCs over seeds ``0 .. n_seeds - 1`` (generated in memory)."""
    rows = []
    for seed in range(n_seeds):
        items, interactions = generate(seed)
        genres = {it.item_id: frozenset(it.genres) for it in items}
        s = summary(genres, interactions)
        e = evaluate(build_features(genres, interactions))
        rows.append((s["positive_rate"], e["auc_oracle"], e["auc_order_only"], e["auc_time_aware"]))
    arr = np.asarray(rows)
    gap = arr[:, 3] - arr[:, 2]
    lines = [
        f"| over seeds 0..{n_seeds - 1} | mean | min | max |",
        "|---|---|---|---|",
        f"| positive rate | {arr[:, 0].mean():.4f} | {arr[:, 0].min():.4f} | {arr[:, 0].max():.4f} |",
        f"| test AUC, oracle | {arr[:, 1].mean():.4f} | {arr[:, 1].min():.4f} | {arr[:, 1].max():.4f} |",
        f"| test AUC, order-only | {arr[:, 2].mean():.4f} | {arr[:, 2].min():.4f} | {arr[:, 2].max():.4f} |",
        f"| test AUC, time-aware | {arr[:, 3].mean():.4f} | {arr[:, 3].min():.4f} | {arr[:, 3].max():.4f} |",
        f"| time-aware minus order-only | {gap.mean():+.4f} | {gap.min():+.4f} | {gap.max():+.4f} |",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed")
    parser.add_argument("--report", action="store_true", help="print the learnability report")
    parser.add_argument(
        "--report-seeds",
        type=int,
        default=0,
        metavar="N",
        help="with --report: also summarise the AUCs over seeds 0..N-1 (in memory; nothing is written)",
    )
    args = parser.parse_args(argv)
    items, interactions = generate(args.seed)
    write(args.out, items, interactions)
    print(f"wrote {len(items)} items and {len(interactions)} interactions to {args.out}", file=sys.stderr)
    if args.report:
        print(report(args.out))
        if args.report_seeds > 0:
            print()
            print(robustness(args.report_seeds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

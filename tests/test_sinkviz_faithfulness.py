"""Faithfulness of explanations on a tiny seeded model: deletion numbers against a direct computation for one
sample.

Checks: rankings by |score|; comprehensiveness, sufficiency and the random baseline equal logits computed by
hand on a batch whose behaviors are deleted through the attention mask (content, and the joint after it; the
last behavior takes the joint before it); the occlusion explanation agrees with single deletions; curve means
and counts; the whole study end to end.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import torch
from builders import TINY_ROWS, build_tiny

from ctrsink.text import ROLE_ID
from sinkviz.faithfulness import (
    METHODS,
    RANDOM,
    curves,
    deletion_study,
    explanations,
    faithfulness_study,
    ranking,
)
from sinkviz.studies import study_of

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield build_tiny(inter_sink=True, sink_signal="time_gap", scratch_layers=4)
    torch.set_num_threads(before)


def hand_logit(model, batcher, row: dict, field: str, deleted: set[int]) -> float:
    """The row's logit with `deleted` behaviors of `field` masked out, positions worked out from the roles."""
    batch = batcher([row])
    t = batch["fields"][field]
    roles, beh = t["token_roles"][0], t["behavior_index"][0]
    last = int(beh[roles == ROLE_ID["behavior"]].max())
    drop = torch.zeros_like(roles, dtype=torch.bool)

    def joint_after(j: int) -> torch.Tensor:
        sink = ((roles == ROLE_ID["sink"]) & (beh == j)).nonzero().flatten()
        return torch.cat([sink, sink + 1])  # the sink, then the one-token separator ';'

    for j in deleted:
        drop |= (roles == ROLE_ID["behavior"]) & (beh == j)
        if j < last:
            drop[joint_after(j)] = True
        else:  # the last behavior has no joint after it: the one before it goes
            drop[joint_after(j - 1)] = True
    assert all(roles[p] == ROLE_ID["separator"] for p in joint_after(0)[1:])
    t["attention_mask"][0, drop] = 0
    t["token_roles"][0, drop] = ROLE_ID["padding"]
    t["behavior_index"][0, drop] = -1
    t["sink_signal_ids"][0, drop] = -1
    with torch.no_grad():
        return float(model(batch["fields"]))


def test_ranking_by_magnitude_then_index() -> None:
    assert ranking({0: -2.0, 1: 0.5, 2: 1.0, 3: 0.5}, [0, 1, 2, 3, 4]) == [0, 2, 1, 3, 4]


def test_deletion_numbers_equal_a_direct_computation(tiny) -> None:
    model, batcher = tiny
    row = dict(TINY_ROWS[0])  # pos: 5 behaviors, neg: 3
    study = study_of(model, batcher, [row], 1)
    scores = {
        "attention": [0.1, 0.5, 0.2, 0.9, 0.3],  # ranks 3, 1, 4, 2, 0
        "integrated_gradients": [-2.0, 0.5, 1.0, 0.1, 0.0],  # ranks 0, 2, 1, 3, 4
    }
    explained = pd.DataFrame(
        [(0, "pos", k, m, s[k]) for m, s in scores.items() for k in range(5)],
        columns=["sample_id", "field", "behavior", "method", "score"],
    )
    table = deletion_study(study, explained, max_k=3, random_draws=2, seed=0).set_index(
        ["field", "method", "k"]
    )
    with torch.no_grad():
        full = float(model(batcher([row])["fields"]))
    order = {"attention": [3, 1, 4, 2, 0], "integrated_gradients": [0, 2, 1, 3, 4]}
    for method, ranked in order.items():
        for k in (1, 2, 3):
            got = table.loc[("pos", method, k)]
            comp = abs(full - hand_logit(model, batcher, row, "pos", set(ranked[:k])))
            suff = abs(full - hand_logit(model, batcher, row, "pos", set(ranked[k:])))
            assert got["comprehensiveness"] == pytest.approx(comp, abs=1e-6)
            assert got["sufficiency"] == pytest.approx(suff, abs=1e-6)
            assert got["n_behaviors"] == 5 and got["user_id"] == "u0"
    # random: the mean over two seeded draws (seed, sample, field stream, draw)
    for k in (1, 2):
        want = []
        for d in range(2):
            perm = [int(j) for j in np.random.default_rng([0, 0, 0, d]).permutation(5)]
            want.append(abs(full - hand_logit(model, batcher, row, "pos", set(perm[:k]))))
        assert table.loc[("pos", RANDOM, k)]["comprehensiveness"] == pytest.approx(np.mean(want), abs=1e-6)
    # the neg field has no scores: only the random baseline, k = 1, 2 of its 3 behaviors, field stream 1
    neg = table.loc["neg"].reset_index()
    assert set(neg["method"]) == {RANDOM} and sorted(neg["k"]) == [1, 2]
    want = []
    for d in range(2):
        perm = [int(j) for j in np.random.default_rng([0, 0, 1, d]).permutation(3)]
        want.append(abs(full - hand_logit(model, batcher, row, "neg", set(perm[1:]))))
    assert neg[neg["k"] == 1]["sufficiency"].item() == pytest.approx(np.mean(want), abs=1e-6)


def test_explanations_agree_with_single_deletions(tiny) -> None:
    model, batcher = tiny
    rows = [dict(r) for r in TINY_ROWS]
    study = study_of(model, batcher, rows, 3)
    explained = explanations(study, n_steps=4)
    assert set(explained["method"]) == set(METHODS)
    occ = explained[explained["method"] == "occlusion"].set_index(["sample_id", "field", "behavior"])["score"]
    for sid, field, k in [(0, "pos", 0), (0, "pos", 4), (2, "neg", 0), (1, "pos", 1)]:
        row = rows[sid]
        with torch.no_grad():
            full = float(model(batcher([row])["fields"]))
        assert occ[(sid, field, k)] == pytest.approx(
            full - hand_logit(model, batcher, row, field, {k}), abs=1e-5
        )
    # every explanation scores the same behaviors
    per_method = explained.groupby("method").apply(
        lambda p: sorted(zip(p["sample_id"], p["field"], p["behavior"]))
    )
    assert all(v == per_method["attention"] for v in per_method)


def test_curves_are_user_bootstrap_means() -> None:
    deletion = pd.DataFrame(
        {
            "sample_id": [0, 1, 2, 3],
            "user_id": ["a", "a", "b", "c"],
            "field": "pos",
            "method": ["attention"] * 3 + ["random"],
            "k": 1,
            "n_behaviors": 3,
            "comprehensiveness": [1.0, 2.0, 4.0, 0.5],
            "sufficiency": [0.0, 0.0, 3.0, 0.5],
        }
    )
    c = curves(deletion, n_boot=500, seed=1).set_index(["method", "measure"])
    att = c.loc[("attention", "comprehensiveness")]
    assert (att["mean"], att["n"]) == (pytest.approx(7 / 3), 3)
    # user a alone gives 1.5, user b alone 4: every replicate lies between
    assert 1.5 <= att["lo"] <= att["mean"] <= att["hi"] <= 4.0
    one = c.loc[("random", "sufficiency")]
    assert one["mean"] == one["lo"] == one["hi"] == 0.5


def test_faithfulness_study_end_to_end(tiny) -> None:
    model, batcher = tiny
    study = study_of(model, batcher, [dict(r) for r in TINY_ROWS], 3)
    tables = faithfulness_study(study, max_k=3, random_draws=1, n_steps=4, n_boot=50)
    assert set(tables) == {"rollout", "explanations", "deletion", "deletion_curves"}
    cur = tables["deletion_curves"]
    assert set(cur["method"]) == {*METHODS, RANDOM}
    # (sample, field) instances with more than k behaviors: pos 5, 2, 4 and neg 3, 0, 1
    counts = cur[(cur["method"] == "attention") & (cur["measure"] == "sufficiency")].set_index("k")["n"]
    assert counts.to_dict() == {1: 4, 2: 3, 3: 2}
    d = tables["deletion"]
    assert (
        set(d["method"]) == {*METHODS, RANDOM} and (d[["comprehensiveness", "sufficiency"]] >= 0).all().all()
    )

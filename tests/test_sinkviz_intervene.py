"""Interventions, attention rollout and head roles on tiny seeded models, checked against hand computations.

Checks: interventions that change nothing (lambda already 0, no sinks in the text) give exactly zero Δ;
blocking a key removes all attention mass from it (seen through capture); the sink-less re-rendering keeps the
very behaviors and drops only the sink tokens; signal transforms; head mean-ablation writes the hand-computed
mean; the table's Δ equals direct metric differences and shares its resamples with `ctrsink.intervals`;
rollout equals a hand computation on a 2-layer stack; head roles of a hand-built pattern; artifacts and CLI
errors; the whole path from a trained run.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from builders import TINY_ROWS, build_tiny, make_row
from scipy.special import expit
from sklearn.metrics import roc_auc_score

from ctrsink.errors import CtrSinkError
from ctrsink.intervals import paired_user_bootstrap
from ctrsink.metrics import EPS
from ctrsink.text import ROLE_ID
from sinkviz import capture, load_interventions
from sinkviz.heads import HeadMass, classify
from sinkviz.interventions import (
    BatchRef,
    Intervention,
    block_keys,
    head_means,
    intervene_study,
    mean_ablate_head,
    out_projections,
    plan,
    signal_none,
    signal_shuffled,
    sinkless_batcher,
)
from sinkviz.reduce import FieldBatch
from sinkviz.rollout import behavior_mass, pool_weights, rollout
from sinkviz.studies import study_of, user_mean_interval, write_tables

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[1]
SINK = dict(inter_sink=True, sink_signal="time_gap", scratch_layers=4)


def rows() -> list[dict]:
    """TINY_ROWS plus two rows, so users u0 and u2 have both labels (gAUC is defined)."""
    extra = [make_row(3, [1, 2, 3], [4, 5], 2, 0), make_row(4, [5, 6, 7, 8], [9], 3, 0)]
    extra[0]["user_id"], extra[1]["user_id"] = "u0", "u2"
    return [dict(r) for r in TINY_ROWS] + extra


@pytest.fixture(scope="module")
def sink_model():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield build_tiny(**SINK)
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def qwen_model():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield build_tiny("scratch:qwen2-tiny", **SINK)
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def plain_model():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield build_tiny(use_sink=False, scratch_layers=4)
    torch.set_num_threads(before)


def test_noop_interventions_give_exactly_zero(sink_model, plain_model) -> None:
    model, batcher = sink_model
    saved = [m.inter_sink_lambda.detach().clone() for m in model.inter_sink.values()]
    try:
        with torch.no_grad():
            for m in model.inter_sink.values():
                m.inter_sink_lambda.zero_()  # lambda already 0: switching the bias off changes nothing
        table = intervene_study(study_of(model, batcher, rows(), 2), kinds=["inter_sink_off"], n_boot=50)
    finally:
        with torch.no_grad():
            for m, v in zip(model.inter_sink.values(), saved):
                m.inter_sink_lambda.copy_(v)
    assert list(table["interventions"]["intervention"]) == [
        "inter_sink_off@L0",
        "inter_sink_off@L1",
        "inter_sink_off@all",
    ]
    # no sinks in the text: removing them, blocking them, or touching their (absent) signal changes nothing
    model, batcher = plain_model
    kinds = ["sinks_removed", "signal_none", "signal_shuffled", "block_sink_keys"]
    plain = intervene_study(study_of(model, batcher, rows(), 2), kinds=kinds, n_boot=50)
    for t in (table, plain):
        iv = t["interventions"]
        deltas = iv[[c for c in iv.columns if c.split("_")[0] in ("delta", "lo", "hi")]].to_numpy()
        assert (deltas == 0.0).all(), iv
        scores = t["intervention_scores"].pivot(index="sample_id", columns="intervention", values="logit")
        assert (scores.to_numpy() == scores[["none"]].to_numpy()).all()
    assert set(plain["interventions"]["note"]) == {
        "no-op: the run has no sink tokens",
        "no-op: the run has no sink signal",
    }


@pytest.mark.parametrize("which", ["sink_model", "qwen_model"])
def test_blocking_a_key_removes_all_mass_from_it(which: str, request: pytest.FixtureRequest) -> None:
    model, batcher = request.getfixturevalue(which)
    batch = batcher(rows())
    ref = BatchRef(batch["fields"])
    for role in ("sink", "separator"):
        with torch.no_grad(), block_keys(model, ref, role, [0]), capture(model) as cache:
            model(batch["fields"])
        for f in model.history_fields:
            keys = batch["fields"][f]["token_roles"] == ROLE_ID[role]
            assert keys.any()
            blocked, free = cache["layer.0.attn.pattern", f], cache["layer.1.attn.pattern", f]
            cols = keys[:, None, None, :].expand_as(blocked)
            assert (blocked[cols] == 0).all()  # exactly zero from every query and head
            assert free[cols].sum() > 0  # layer 1 was not blocked
            np.testing.assert_allclose(blocked.sum(-1), 1.0, atol=1e-5)  # the mass went elsewhere
    assert ref.fields is batch["fields"]


def test_sinkless_rendering_keeps_the_behaviors_and_drops_only_sinks(sink_model) -> None:
    model, batcher = sink_model
    sample = rows()
    with_sinks, without = batcher(sample), sinkless_batcher(batcher)(sample)
    for f in model.history_fields:
        a, b = with_sinks["fields"][f], without["fields"][f]
        assert not (b["token_roles"] == ROLE_ID["sink"]).any()
        assert (b["sink_signal_ids"] < 0).all()
        for i in range(len(sample)):
            keep = (a["token_roles"][i] != ROLE_ID["sink"]) & a["attention_mask"][i].bool()
            n = int(b["attention_mask"][i].sum())
            assert a["input_ids"][i][keep].tolist() == b["input_ids"][i][:n].tolist()
            assert a["behavior_index"][i][keep].tolist() == b["behavior_index"][i][:n].tolist()


def test_signal_transforms(sink_model) -> None:
    model, batcher = sink_model
    batch = batcher(rows())
    none = signal_none(batch["fields"])
    first = signal_shuffled(batch["fields"], batch["sample_id"], model.history_fields, seed=3)
    again = signal_shuffled(batch["fields"], batch["sample_id"], model.history_fields, seed=3)
    moved = False
    for f in model.history_fields:
        ids = batch["fields"][f]["sink_signal_ids"]
        carries = ids >= 0
        assert (none[f]["sink_signal_ids"][carries] == 0).all() and (
            none[f]["sink_signal_ids"][~carries] == -1
        ).all()
        shuffled = first[f]["sink_signal_ids"]
        assert torch.equal(shuffled, again[f]["sink_signal_ids"])  # seeded
        assert torch.equal(shuffled >= 0, carries)
        for i in range(ids.shape[0]):
            assert sorted(shuffled[i][carries[i]].tolist()) == sorted(ids[i][carries[i]].tolist())
        moved |= not torch.equal(shuffled, ids)
    assert moved


def test_head_mean_ablation_writes_the_hand_mean(sink_model) -> None:
    model, batcher = sink_model
    study = study_of(model, batcher, rows(), 2)
    ref = BatchRef()
    means = head_means(model, study, ref)
    proj = out_projections(model)[1]
    seen: dict[str, list[torch.Tensor]] = {}
    hook = proj.register_forward_hook(
        lambda m, args, out: seen.setdefault(model.current_field, []).append(args[0])
    )
    batch = study.batches()[0]
    ref.fields = batch["fields"]
    try:
        with torch.no_grad():
            model(batch["fields"])
            with mean_ablate_head(model, ref, 1, 2, means):
                model(batch["fields"])
    finally:
        hook.remove()
    # the hand mean of field pos at layer 1: over every real position of every study batch
    xs = []
    for b in study.batches():
        ref.fields = b["fields"]
        got: list[torch.Tensor] = []
        h = proj.register_forward_pre_hook(
            lambda m, args, got=got: got.append(args[0]) if model.current_field == "pos" else None
        )
        with torch.no_grad():
            model(b["fields"])
        h.remove()
        xs.append(got[0][b["fields"]["pos"]["attention_mask"].bool()])
    hand = torch.cat(xs).double().mean(0).float()
    torch.testing.assert_close(means[("pos", 1)], hand)
    before, after = seen["pos"]
    d = before.shape[-1] // 4
    valid = batch["fields"]["pos"]["attention_mask"].bool()
    torch.testing.assert_close(
        after[valid][:, 2 * d : 3 * d], hand[2 * d : 3 * d].expand(int(valid.sum()), d)
    )
    torch.testing.assert_close(after[..., : 2 * d], before[..., : 2 * d])
    torch.testing.assert_close(after[~valid], before[~valid])


def test_table_deltas_equal_direct_metric_differences(sink_model) -> None:
    model, batcher = sink_model
    sample = rows()
    tables = intervene_study(study_of(model, batcher, sample, 2), heads=False, n_boot=200, seed=5)
    scores = tables["intervention_scores"].pivot(index="sample_id", columns="intervention", values="logit")
    labels = np.array([r["label"] for r in sample], dtype=float)
    base = scores["none"].to_numpy()
    pred = pd.DataFrame(
        {"sample_id": scores.index, "user_id": [r["user_id"] for r in sample], "label": labels}
    )

    def loss(z: np.ndarray) -> np.ndarray:
        p = np.clip(expit(z), EPS, 1 - EPS)
        return -(labels * np.log(p) + (1 - labels) * np.log(1 - p))

    for row in tables["interventions"].itertuples():
        li = scores[row.intervention].to_numpy()
        assert row.delta_auc == pytest.approx(
            roc_auc_score(labels, li) - roc_auc_score(labels, base), abs=1e-12
        )
        assert row.delta_logloss == pytest.approx(loss(li).mean() - loss(base).mean(), abs=1e-12)
        assert row.delta_abs_score == pytest.approx(np.abs(expit(li) - expit(base)).mean(), abs=1e-12)
        want = paired_user_bootstrap(pred.assign(logit=li), pred.assign(logit=base), "gauc", 200, 5)
        assert (row.delta_gauc, row.lo_gauc, row.hi_gauc) == pytest.approx(want, nan_ok=True)
    # the mean-interval helper draws the bootstrap's users: Δ LogLoss through it is the bootstrap's, to the
    # bit
    li = scores["signal_none"].to_numpy()
    got = user_mean_interval(loss(li) - loss(base), pred["user_id"].to_numpy(), 200, 5)
    assert got == pytest.approx(
        paired_user_bootstrap(pred.assign(logit=li), pred.assign(logit=base), "logloss", 200, 5)
    )


def test_plan_lists_per_layer_and_all(sink_model) -> None:
    model, _ = sink_model
    names = [i.name for i in plan(model, heads=True)]
    assert names[:3] == ["sinks_removed", "signal_none", "signal_shuffled"]
    assert "block_sink_keys@L1" in names and "block_separator_keys@all" in names
    assert "block_sink_keys@L2" not in names  # layers 2-3 see pooled field vectors
    assert sum(n.startswith("head_mean@") for n in names) == 4 * 4
    assert Intervention("head_mean", 3, 1).name == "head_mean@L3H1"
    with pytest.raises(ValueError, match="unknown intervention"):
        plan(model, kinds=["nope"])


# ------------------------------------------------------------------------------------------------ rollout


def test_rollout_equals_hand_computation_on_two_layers() -> None:
    a0 = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    b0 = torch.tensor([[1.0, 0.0, 0.0], [0.1, 0.9, 0.0], [0.4, 0.4, 0.2]])
    a1 = torch.tensor([[1.0, 0.0, 0.0], [0.3, 0.7, 0.0], [0.6, 0.2, 0.2]])
    b1 = torch.tensor([[1.0, 0.0, 0.0], [0.7, 0.3, 0.0], [0.0, 0.4, 0.6]])
    layers = [torch.stack([a0, b0])[None], torch.stack([a1, b1])[None]]  # (1, 2 heads, 3, 3)
    r0, r1 = rollout(layers)
    # layer 0: heads averaged, half residual: rows of [[1,0,0],[.3,.7,0],[.3,.35,.35]] / 2 + I / 2
    l0 = np.array([[1.0, 0, 0], [0.15, 0.85, 0], [0.15, 0.175, 0.675]])
    l1 = np.array([[1.0, 0, 0], [0.25, 0.75, 0], [0.15, 0.15, 0.7]])
    np.testing.assert_allclose(r0[0].numpy(), l0, atol=1e-12)
    np.testing.assert_allclose(r1[0].numpy(), l1 @ l0, atol=1e-12)
    # row 2 of l1 @ l0 by hand: 0.15*[1,0,0] + 0.15*[.15,.85,0] + 0.7*[.15,.175,.675]
    np.testing.assert_allclose(r1[0, 2].numpy(), [0.2775, 0.25, 0.4725], atol=1e-12)
    # behaviors: token 0 is [CLS] (-1), tokens 1 and 2 are behaviors 0 and 1; all tokens pooled
    field = {
        "attention_mask": torch.ones(1, 3, dtype=torch.long),
        "token_roles": torch.tensor([[ROLE_ID["special"], ROLE_ID["behavior"], ROLE_ID["behavior"]]]),
    }
    w = pool_weights(field, "all_tokens", True)
    mass = behavior_mass(r1, w, torch.tensor([[-1, 0, 1]]))
    col = (l1 @ l0).mean(0)  # mean over the three pooled queries of the mass each key receives
    np.testing.assert_allclose(mass[0].numpy(), col[1:], atol=1e-12)


def test_rollout_study_raw_matches_capture(sink_model) -> None:
    from sinkviz.rollout import rollout_study

    model, batcher = sink_model
    study = study_of(model, batcher, rows()[:1], 1)
    table = rollout_study(study)
    batch = study.batches()[0]
    with torch.no_grad(), capture(model) as cache:
        model(batch["fields"])
    pos = batch["fields"]["pos"]
    a = cache["layer.1.attn.pattern", "pos"][0].double().mean(0)  # (T, T)
    received = a.mean(0)  # every token real and pooled in this one-row batch
    roles, beh = pos["token_roles"][0], pos["behavior_index"][0]
    for k in range(5):
        # behavior k: its content, the sink after it and the separator after that sink
        owned = (beh == k).nonzero().flatten()
        tokens = torch.cat([owned, owned[-1:] + 1]) if k < 4 else owned
        assert roles[tokens[-1]] in (ROLE_ID["separator"], ROLE_ID["behavior"])
        got = table.query("field == 'pos' and layer == 1 and behavior == @k")["raw"].item()
        assert got == pytest.approx(float(received[tokens].sum()), abs=1e-9)


# ------------------------------------------------------------------------------------------------ head roles


def test_head_roles_on_a_hand_built_pattern() -> None:
    # [CLS] prompt b0 b0 sink sep b1 [SEP], one sample; queries: all 8 tokens
    roles = torch.tensor([[1, 2, 3, 3, 6, 4, 3, 1]])
    behavior = torch.tensor([[-1, -1, 0, 0, 0, -1, 1, -1]])
    fb = FieldBatch(roles, behavior, torch.ones(1, 8, dtype=torch.bool), torch.tensor([7]))
    pattern = torch.zeros(1, 3, 8, 8)
    pattern[0, 0, :, 4] = 1.0  # head 0: everything on the sink
    pattern[0, 1, :, 0] = 0.6  # head 1: 0.6 on [CLS], 0.4 on the prompt
    pattern[0, 1, :, 1] = 0.4
    for q in range(8):  # head 2: each query on itself
        pattern[0, 2, q, q] = 1.0
    pattern[0, 2, 6] = 0.0  # ... but b1's token looks 0.5 at each b0 token (its previous behavior)
    pattern[0, 2, 6, 2:4] = 0.5
    reducer = HeadMass()
    reducer.update("pos", 0, pattern, fb)
    mass = reducer.table().pivot(index="head", columns="category", values="mass")
    assert mass.loc[0, "sink"] == 1.0
    assert (mass.loc[1, "first"], mass.loc[1, "prompt"]) == pytest.approx((0.6, 0.4))
    # head 2 by hand over 8 queries: [CLS], [SEP] -> first (2); prompt (1); b0 tokens -> own (2);
    # sink -> sink (1); separator -> separator (1); b1 -> previous behavior (1)
    want = {"first": 2, "prompt": 1, "own_behavior": 2, "sink": 1, "separator": 1, "previous_behavior": 1}
    assert mass.loc[2].to_dict() == pytest.approx({c: want.get(c, 0) / 8 for c in mass.columns})
    roles_ = classify(reducer.table(), 0.5).set_index("head")
    assert list(roles_["role"]) == ["sink", "first", "mixed"]
    assert roles_.loc[2, "top_mass"] == pytest.approx(0.25)
    assert list(classify(reducer.table(), 0.25)["role"])[2] in ("first", "own_behavior")
    # a decoder's first token (a prompt token) counts as `first`
    fb2 = FieldBatch(
        torch.tensor([[2, 3, 3]]),
        torch.tensor([[-1, 0, 0]]),
        torch.ones(1, 3, dtype=torch.bool),
        torch.tensor([1]),
    )
    p2 = torch.tensor([[[[1.0, 0, 0], [0.5, 0.5, 0], [0.5, 0.25, 0.25]]]])
    r2 = HeadMass()
    r2.update("pos", 0, p2, fb2)
    m2 = r2.table().set_index("category")["mass"]
    assert (m2["first"], m2["prompt"], m2["own_behavior"]) == pytest.approx((2 / 3, 0.0, 1 / 3))


# --------------------------------------------------------------------------------------------- artifacts, CLI


def test_artifacts_round_trip_and_refuse_other_runs(sink_model, tmp_path: Path) -> None:
    model, batcher = sink_model
    study = study_of(model, batcher, rows()[:2], 2, meta={"run_dir": "/r", "split": "test"})
    tables = intervene_study(study, kinds=["signal_none"], n_boot=20)
    write_tables(tmp_path, "intervene", study, tables, n_boot=20)
    loaded = load_interventions(tmp_path)
    pd.testing.assert_frame_equal(loaded["interventions"], tables["interventions"])
    assert loaded.manifest["analyses"]["intervene"]["n_boot"] == 20 and loaded.manifest["run_dir"] == "/r"
    other = study_of(model, batcher, rows()[:2], 2, meta={"run_dir": "/other", "split": "test"})
    with pytest.raises(CtrSinkError, match="another run_dir"):
        write_tables(tmp_path, "intervene", other, tables)
    with pytest.raises(CtrSinkError, match="no interventions.json"):
        load_interventions(tmp_path / "missing")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["intervene", "--n-boot", "0"], "option '--n-boot': 0 is not a positive number"),
        (["intervene", "--only", "sinks,bogus"], "option '--only': unknown intervention(s) bogus,"),
        (["heads", "--samples", "-1"], "option '--samples': -1 is negative"),
        (["heads", "--threshold", "1.5"], "option '--threshold': 1.5 is not in (0, 1]"),
        (["faithfulness", "--max-k", "0"], "option '--max-k': 0 is not a positive number"),
        (["rollout", "--batch-size", "0"], "option '--batch-size': 0 is not a positive number"),
        (["rollout"], "is not a run directory"),
    ],
)
def test_cli_bad_input_is_one_line(argv: list[str], message: str, tmp_path: Path, capsys) -> None:
    from sinkviz.cli import main

    assert main([*argv, "--run", str(tmp_path / "no_run"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_from_a_trained_run_through_cli_and_api(tmp_path: Path, capsys) -> None:
    from ctrsink.config import load_config
    from ctrsink.data import prepare
    from ctrsink.train import train
    from sinkviz import head_roles, intervene
    from sinkviz.cli import main

    data = tmp_path / "data"
    prepare("csv", REPO / "sample_data" / "synthetic", data)
    overrides = ["train_samples=48", "eval_samples=24", "epochs=1", "num_behaviors=4", "use_sink=true"]
    overrides += ["inter_sink=true", "sink_signal=time_gap", "scratch_hidden=32", "scratch_vocab_size=500"]
    train(data, load_config(None, overrides), tmp_path / "run")
    out = tmp_path / "study"
    table = intervene(tmp_path / "run", "test", 12, out, batch_size=6, heads=False, n_boot=50)
    assert main(["heads", "--run", str(tmp_path / "run"), "--samples", "12", "--out", str(out)]) == 0
    assert main(["rollout", "--run", str(tmp_path / "run"), "--samples", "12", "--out", str(out)]) == 0
    assert "wrote head roles" in capsys.readouterr().out
    loaded = load_interventions(out)
    assert set(loaded.tables) == {
        "interventions",
        "intervention_scores",
        "head_mass",
        "head_roles",
        "rollout",
    }
    assert set(loaded.manifest["analyses"]) == {"intervene", "heads", "rollout"}
    assert loaded.manifest["samples"] == 12 and loaded["rollout"]["sample_id"].nunique() == 12
    pd.testing.assert_frame_equal(loaded["interventions"], table)
    sums = loaded["head_mass"].groupby(["field", "layer", "head"])["mass"].sum()
    np.testing.assert_allclose(sums.to_numpy(), 1.0, atol=1e-6)
    roles = head_roles(tmp_path / "run", "test", 12, threshold=0.3)
    assert set(roles["field"]) == {"history", "pos", "neg", "title", "categories"}


def test_a_decoder_runs_every_study(qwen_model) -> None:
    from sinkviz.heads import head_mass_study
    from sinkviz.rollout import rollout_study

    model, batcher = qwen_model
    study = study_of(model, batcher, rows(), 3)
    iv = intervene_study(study, n_boot=20)["interventions"]
    assert (iv["kind"] == "head_mean").sum() == 4 * 4 and iv["delta_abs_score"].notna().all()
    moved = iv.set_index("intervention")["delta_abs_score"]
    assert moved["block_sink_keys@all"] > 0 and moved["head_mean@L0H0"] > 0
    mass = head_mass_study(study)
    np.testing.assert_allclose(mass.groupby(["field", "layer", "head"])["mass"].sum(), 1.0, atol=1e-6)
    table = rollout_study(study)
    assert set(table["layer"]) == {0, 1} and (table["rollout"] > 0).all()

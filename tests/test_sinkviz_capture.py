"""sinkviz capture, reductions and artifacts on tiny seeded models (plain transformers and scratch CTR models).

Checks: hook names are pinned; captured patterns equal the model's own `output_attentions` and rows sum to one;
the fast path (sdpa) comes back after capture, also after an exception, with unchanged logits; role masses per
query sum to one; inter-sink, behavior and affinity matrices match loops over the renderer's own records; the
sink metric matches a hand-made pattern; artifacts round-trip; `capture_run` works on a trained run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from builders import TINY_ROWS, build_tiny

from ctrsink.text import ROLE_ID
from sinkviz import (
    ARCHITECTURES,
    SCHEMA_VERSION,
    AnalysisError,
    AttentionAnalysis,
    AttentionCache,
    AttentionEvent,
    FieldBatch,
    capture,
    hook_names,
    load_analysis,
    write_analysis,
)
from sinkviz.artifacts import MANIFEST, make_manifest
from sinkviz.capture import anchor_for, model_callback
from sinkviz.reduce import SinkMetric

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]


def plain(kind: str) -> torch.nn.Module:
    from transformers import BertConfig, BertModel, Qwen2Config, Qwen2Model

    torch.manual_seed(0)
    small = dict(
        vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
    )
    if kind == "bert":
        model = BertModel(BertConfig(**small), add_pooling_layer=False)
    else:
        model = Qwen2Model(Qwen2Config(**small, num_key_value_heads=2))  # GQA: weights still have 4 heads
    return model.eval()


def plain_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(1, 60, (3, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 6:] = 0
    mask[2, 4:] = 0
    return ids, mask


# ------------------------------------------------------------------------------------------------ hooks


def test_hook_names_and_architecture_table_are_pinned() -> None:
    assert hook_names(3) == ["layer.0.attn.pattern", "layer.1.attn.pattern", "layer.2.attn.pattern"]
    table = {k: (v.layers, v.attention) for k, v in ARCHITECTURES.items()}
    assert table == {
        "bert": ("encoder.layer", "attention.self"),
        "roberta": ("encoder.layer", "attention.self"),
        "qwen2": ("layers", "self_attn"),
        "qwen3": ("layers", "self_attn"),
    }


@pytest.mark.parametrize("kind", ["bert", "qwen2"])
def test_capture_equals_output_attentions_on_plain_models(kind: str) -> None:
    model = plain(kind)
    ids, mask = plain_inputs()
    assert model.config._attn_implementation == "sdpa"
    with torch.no_grad():
        before = model(ids, attention_mask=mask).last_hidden_state
        with capture(model) as cache:
            assert model.config._attn_implementation == "eager"
            out = model(ids, attention_mask=mask, output_attentions=True)
        after = model(ids, attention_mask=mask).last_hidden_state
    assert cache.names() == hook_names(2)
    for i, reference in enumerate(out.attentions):
        pattern = cache[f"layer.{i}.attn.pattern"]
        assert pattern.shape == (3, 4, 9, 9)
        torch.testing.assert_close(pattern, reference, rtol=0, atol=0)
        torch.testing.assert_close(pattern.sum(-1), torch.ones(3, 4, 9), rtol=0, atol=1e-6)
        assert float(pattern[2, :, :, 4:].abs().max()) == 0.0  # padded keys get nothing
    # fast path back; eager and sdpa agree on real tokens
    assert model.config._attn_implementation == "sdpa"
    assert torch.equal(before, after)
    real = mask.bool()
    torch.testing.assert_close(out.last_hidden_state[real], before[real], rtol=1e-5, atol=1e-5)


def test_filters_callback_and_restore_on_exception() -> None:
    model = plain("bert")
    ids, mask = plain_inputs()
    with torch.no_grad(), capture(model) as full:
        model(ids, attention_mask=mask)
    seen = []
    with (
        torch.no_grad(),
        capture(model, names_filter=["layer.1.attn.pattern"], heads=[0, 2], callback=seen.append) as cache,
    ):
        model(ids, attention_mask=mask)
    assert len(cache) == 0 and [e.name for e in seen] == ["layer.1.attn.pattern"]
    assert seen[0].heads == (0, 2) and seen[0].layer == 1 and seen[0].field is None
    torch.testing.assert_close(seen[0].pattern, full["layer.1.attn.pattern"][:, [0, 2]], rtol=0, atol=0)
    with pytest.raises(ValueError, match="unknown hook name"):
        with capture(model, names_filter="layer.7.attn.pattern"):
            pass
    attention = [layer.attention.self for layer in model.encoder.layer]
    with pytest.raises(RuntimeError, match="boom"):
        with capture(model):
            raise RuntimeError("boom")
    assert model.config._attn_implementation == "sdpa"
    assert all(len(m._forward_hooks) == 0 for m in attention)


@pytest.mark.parametrize(
    "backbone,overrides",
    [
        ("scratch:bert-tiny", {"inter_sink": True}),
        ("scratch:qwen2-tiny", {"inter_sink": True}),
        ("scratch:bert-tiny", {"use_sink": False}),
    ],
)
def test_ctr_model_capture_keeps_fast_path_and_logits(backbone: str, overrides: dict) -> None:
    model, batcher = build_tiny(backbone, **overrides)
    batch = batcher(TINY_ROWS)
    with torch.no_grad():
        before = model(batch["fields"])
        with capture(model) as cache:
            captured = model(batch["fields"])
        after = model(batch["fields"])
    assert model.backbone.attn_implementation == "sdpa"
    assert torch.equal(before, after)
    torch.testing.assert_close(captured, before, rtol=1e-5, atol=1e-5)
    # lower layer 0 runs once per field, upper layer 1 once over the pooled fields
    assert [(e.layer, e.field) for e in cache] == [(0, f) for f in model.fields] + [(1, "fields")]
    for e in cache:
        valid = batch["fields"][e.field]["attention_mask"].bool() if e.field != "fields" else None
        sums = e.pattern.sum(-1)
        sums = sums.permute(0, 2, 1)[valid] if valid is not None else sums
        torch.testing.assert_close(sums, torch.ones_like(sums), rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------------------ reductions


def analyse(model, batcher, rows, **kwargs):
    """-> (analysis fed during the forward, a cache of the same patterns, the batch)."""
    analysis = AttentionAnalysis(model.history_fields, model.causal, anchor_for(model), **kwargs)
    batch = batcher(rows)
    analysis.set_batch(batch["fields"], batch["sample_id"])
    cache, feed = AttentionCache(), model_callback(model, analysis)

    def both(event: AttentionEvent) -> None:
        cache.events.append(event)
        feed(event)

    with torch.no_grad(), capture(model, callback=both):
        model(batch["fields"])
    return analysis, cache, batch


def test_role_mass_per_query_sums_to_one_and_matches_loops() -> None:
    model, batcher = build_tiny("scratch:qwen2-tiny")
    analysis, cache, batch = analyse(model, batcher, TINY_ROWS)
    table = analysis.tables()["role_mass"]
    assert set(table["key_role"]) == {"special", "prompt", "behavior", "separator", "target", "sink"}
    sums = table.groupby(["field", "layer", "head", "query_role"])["mass"].sum()
    np.testing.assert_allclose(sums.to_numpy(), 1.0, atol=1e-5)
    # one cell by hand: mean over behavior-token queries of the mass they put on sink keys (field pos, head 2)
    pattern = cache["layer.0.attn.pattern", "pos"][:, 2].double()
    roles = batch["fields"]["pos"]["token_roles"]
    masses = [
        float(pattern[b, q][roles[b] == ROLE_ID["sink"]].sum())
        for b in range(len(TINY_ROWS))
        for q in range(roles.shape[1])
        if roles[b, q] == ROLE_ID["behavior"]
    ]
    cell = table.query(
        "field == 'pos' and layer == 0 and head == 2 and query_role == 'behavior' and key_role == 'sink'"
    )
    assert int(cell["count"].iloc[0]) == len(masses)
    assert cell["mass"].iloc[0] == pytest.approx(np.mean(masses), abs=1e-6)


@pytest.mark.parametrize(
    "backbone,overrides",
    [
        ("scratch:bert-tiny", {"inter_sink": True}),
        ("scratch:qwen2-tiny", {}),
        ("scratch:bert-tiny", {"use_sink": False}),
        ("scratch:qwen2-tiny", {"use_sink": False}),
    ],
)
def test_inter_sink_and_behavior_maps_match_hand_computation(backbone: str, overrides: dict) -> None:
    model, batcher = build_tiny(backbone, **overrides)
    analysis, cache, batch = analyse(model, batcher, TINY_ROWS)
    mats = analysis.matrices(model.backbone.num_layers)
    for field in model.history_fields:
        pattern = cache["layer.0.attn.pattern", field].double().numpy()
        h = pattern.shape[1]
        sums, counts = np.zeros((h, 4, 4)), np.zeros((4, 4))
        bsum, bcount = np.zeros((h, 5, 5)), np.zeros((5, 5))
        for b, r in enumerate(TINY_ROWS):
            enc = batcher.encode(r)["enc"][field]  # the renderer's own record of sinks and spans
            if model.cfg.use_sink:
                anchors = dict(zip(enc.sink_behavior, enc.sink_positions))
            else:  # the first separator token after each behavior but the last
                anchors = {k: end for k, (_, end) in enumerate(enc.behavior_spans[:-1])}
            for i, pi in anchors.items():
                for j, pj in anchors.items():
                    sums[:, i, j] += pattern[b, :, pi, pj]
                    counts[i, j] += 1
            for i, (s0, s1) in enumerate(enc.behavior_spans):
                for j, (t0, t1) in enumerate(enc.behavior_spans):
                    bsum[:, i, j] += pattern[b, :, s0:s1, t0:t1].sum(-1).mean(-1)
                    bcount[i, j] += 1
        got_sum, got_count = mats[f"inter_sink/{field}/sum"], mats[f"inter_sink/{field}/count"]
        k = got_count.shape[-1]
        assert got_count[1].sum() == 0  # layer 1 sees pooled fields, never tokens
        np.testing.assert_array_equal(got_count[0], counts[:k, :k])
        np.testing.assert_allclose(got_sum[0], sums[:, :k, :k], atol=1e-6)
        assert counts[k:].sum() == 0 and counts[:, k:].sum() == 0
        n = mats[f"behavior_map/{field}/count"].shape[-1]
        np.testing.assert_array_equal(mats[f"behavior_map/{field}/count"][0], bcount[:n, :n])
        np.testing.assert_allclose(mats[f"behavior_map/{field}/sum"][0], bsum[:, :n, :n], atol=1e-6)
    if model.cfg.use_sink and model.causal:  # decoders: a sink never sees a later sink
        mean = mats["inter_sink/pos/sum"][0] / np.maximum(mats["inter_sink/pos/count"][0], 1)
        assert np.abs(np.triu(mean, 1)).max() == 0.0
    if len(model.inter_sink):  # last_affinity is the last history field's ("neg"), sinks in behavior order
        affinity = model.inter_sink["0"].last_affinity.double().sum(0).numpy()
        np.testing.assert_allclose(mats["affinity/neg/sum"][0], affinity, atol=1e-6)


def hand_batch() -> FieldBatch:
    """Two samples of 5 tokens: [special, behavior 0, sink 0, behavior 1, special]; the second has no sink."""
    r = ROLE_ID
    roles = torch.tensor(
        [
            [r["special"], r["behavior"], r["sink"], r["behavior"], r["special"]],
            [r["special"], r["behavior"], r["behavior"], r["special"], r["padding"]],
        ]
    )
    behavior = torch.tensor([[-1, 0, 0, 1, -1], [-1, 0, 0, -1, -1]])
    return FieldBatch(roles, behavior, roles != r["padding"], torch.tensor([10, 11]))


def test_sink_metric_on_hand_made_patterns() -> None:
    fb = hand_batch()
    # encoder, 2 heads: head 0 puts 0.6 of every row on the sink (position 2), head 1 is uniform over valid keys
    pattern = torch.zeros(2, 2, 5, 5)
    pattern[0, 0] = 0.1
    pattern[0, 0, :, 2] = 0.6
    pattern[0, 1] = 0.2
    pattern[1, :, :, :4] = 0.25
    metric = SinkMetric("sink", eps=(0.3,))
    metric.update("pos", 0, pattern, fb, causal=False)
    t = metric.table().set_index(["key", "head"])
    any_anchor = t.loc["any_anchor"]
    assert any_anchor["n"].tolist() == [1, 1]  # the sample without a sink is not counted
    assert any_anchor["share"].tolist() == [1.0, 0.0]
    assert any_anchor["importance_mean"].tolist() == pytest.approx([0.6, 0.2])
    first = t.loc["first_token"]
    assert first["n"].tolist() == [2, 2]
    assert first["importance_mean"].tolist() == pytest.approx([(0.1 + 0.25) / 2, (0.2 + 0.25) / 2])
    # decoder: rows uniform over keys 0..q; key k is seen by queries q >= k only
    causal = torch.tril(torch.ones(5, 5))
    causal = causal / causal.sum(-1, keepdim=True)
    metric = SinkMetric("sink", eps=(0.25, 0.3))
    metric.update(
        "pos",
        0,
        causal.expand(1, 2, 5, 5).clone(),
        FieldBatch(*(x[:1] for x in (fb.roles, fb.behavior, fb.valid, fb.sample_ids))),
        causal=True,
    )
    t = metric.table().set_index(["key", "eps", "head"])
    sink_importance = (1 / 3 + 1 / 4 + 1 / 5) / 3  # 0.2611: above 0.25, below 0.3
    assert t.loc[("any_anchor", 0.25, 0), "importance_mean"] == pytest.approx(sink_importance)
    assert t.loc[("any_anchor", 0.25, 0), "share"] == 1.0
    assert t.loc[("any_anchor", 0.3, 0), "share"] == 0.0
    first_importance = (1 + 1 / 2 + 1 / 3 + 1 / 4 + 1 / 5) / 5
    assert t.loc[("first_token", 0.3, 1), "importance_mean"] == pytest.approx(first_importance)


def test_separator_anchor_is_first_separator_after_behavior() -> None:
    from sinkviz import anchor_positions

    r = ROLE_ID
    roles = torch.tensor(
        [
            [
                r["prompt"],
                r["behavior"],
                r["separator"],
                r["separator"],
                r["behavior"],
                r["separator"],
                r["behavior"],
                r["special"],
            ]
        ]
    )
    behavior = torch.tensor([[-1, 0, -1, -1, 1, -1, 2, -1]])
    assert anchor_positions(roles, behavior, "separator").tolist() == [[2, 5]]
    assert anchor_positions(roles, behavior, "sink").shape == (1, 0)


# ------------------------------------------------------------------------------------------------ artifacts


def test_artifacts_round_trip_and_refuse_unknown_schema(tmp_path: Path) -> None:
    model, batcher = build_tiny("scratch:bert-tiny", inter_sink=True)
    analysis, _, _ = analyse(model, batcher, TINY_ROWS, full_map_samples=[0, 2])
    tables = analysis.tables()
    mats = analysis.matrices(2)
    record = make_manifest(
        run_dir="r",
        data_dir="d",
        model_family="encoder",
        model_type="bert",
        layers=2,
        heads=4,
        roles=["padding"],
        fields=model.fields,
        history_fields=model.history_fields,
        anchor="sink",
    )
    out = write_analysis(tmp_path / "analysis", record, tables, mats, analysis.full_maps)
    loaded = load_analysis(out)
    assert loaded.manifest["schema_version"] == SCHEMA_VERSION
    for name, frame in tables.items():
        pd.testing.assert_frame_equal(loaded[name], frame)
    for key, value in mats.items():
        np.testing.assert_array_equal(loaded.arrays[key], value)
    mean = loaded.arrays["inter_sink/pos/mean"]
    assert mean.shape == mats["inter_sink/pos/sum"].shape and np.isnan(mean[1]).all()
    np.testing.assert_allclose(loaded.arrays["inter_sink/pos/head_mean"][0], mean[0].mean(0))
    assert set(loaded.full_maps) == set(analysis.full_maps) and {s for s, _, _ in loaded.full_maps} == {0, 2}
    np.testing.assert_array_equal(loaded.full_maps[(0, "pos", 0)], analysis.full_maps[(0, "pos", 0)])
    # only formats that cannot run code on load
    assert {f.suffix for f in out.iterdir()} == {".json", ".parquet", ".safetensors"}
    # a failed rewrite leaves the previous complete folder in place
    with pytest.raises(Exception, match="object"):
        write_analysis(out, record, tables, {"bad": np.array(["x"], dtype=object)})
    assert load_analysis(out).tables.keys() == tables.keys()
    assert [p.name for p in tmp_path.iterdir()] == ["analysis"]
    # a future schema is refused with a message naming both versions
    data = json.loads((out / MANIFEST).read_text())
    (out / MANIFEST).write_text(json.dumps(dict(data, schema_version=SCHEMA_VERSION + 1)))
    with pytest.raises(
        AnalysisError, match=f"schema version {SCHEMA_VERSION + 1}.*reads version {SCHEMA_VERSION}"
    ):
        load_analysis(out)
    with pytest.raises(AnalysisError, match="not an analysis folder"):
        load_analysis(tmp_path)


def test_capture_run_on_a_trained_run(tmp_path: Path) -> None:
    from ctrsink.config import load_config
    from ctrsink.data import load_sample_set, prepare
    from ctrsink.run import load_run, score_rows
    from ctrsink.train import train
    from sinkviz import capture_run

    data = tmp_path / "data"
    prepare("csv", REPO / "sample_data" / "synthetic", data)
    cfg = load_config(
        None,
        [
            "train_samples=64",
            "eval_samples=32",
            "epochs=1",
            "num_behaviors=5",
            "use_sink=true",
            "inter_sink=true",
            "scratch_hidden=32",
            "scratch_vocab_size=500",
        ],
    )
    train(data, cfg, tmp_path / "run")
    out = capture_run(tmp_path / "run", data, "test", 20, tmp_path / "analysis", batch_size=8, full_maps=2)
    loaded = load_analysis(out)
    m = loaded.manifest
    assert (m["anchor"], m["model_type"], m["samples"], m["layers"], m["heads"]) == ("sink", "bert", 20, 2, 4)
    assert len(m["full_map_samples"]) == 2 and set(loaded["tokens"]["sample_id"]) == set(
        m["full_map_samples"]
    )
    sums = loaded["role_mass"].groupby(["field", "layer", "head", "query_role"])["mass"].sum()
    np.testing.assert_allclose(sums.to_numpy(), 1.0, atol=1e-5)
    assert {"inter_sink/pos/mean", "affinity/pos/mean", "behavior_map/neg/head_mean"} <= set(loaded.arrays)
    # the logits recorded under capture equal the fast path's
    bundle = load_run(tmp_path / "run")
    preds = loaded["predictions"]
    split = load_sample_set(data).splits["test"].to_pandas().set_index("sample_id")
    rows = split.loc[preds["sample_id"]].reset_index().to_dict("records")
    np.testing.assert_allclose(preds["logit"], score_rows(bundle, rows), atol=1e-5)

"""sinkviz attributions, offline bertviz views, plotly builders and paper figures on tiny seeded models.

Checks: the side-by-side forward equals the model; integrated gradients satisfy completeness within the reported
delta and f(baseline) is the model on the baseline input; behavior sums equal token sums; occlusion gives one row
per behavior and agrees with integrated gradients on a planted behavior; bertviz pages hold no URL, inline the
vendored libraries and cap long sequences visibly; figures and the CLI work on small trained runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from builders import TINY_ROWS, build_tiny

from ctrsink.text import ROLE_ID
from sinkviz.attribution import (
    COLUMNS,
    FieldsLogit,
    attribute_rows,
    baseline_ids,
    flatten_fields,
    integrated_gradients,
)
from sinkviz.cli import main
from sinkviz.views import (
    VENDOR,
    AttentionView,
    analysis_view,
    attribution_bar,
    inter_sink_heatmap,
    mass_by_layer,
    role_mass_figure,
    view_html,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {
    "bert+signal+inter_sink": ("scratch:bert-tiny", {"sink_signal": "time_gap", "inter_sink": True}),
    "bert, no sink": ("scratch:bert-tiny", {"use_sink": False}),
    "qwen2+signal": ("scratch:qwen2-tiny", {"sink_signal": "index"}),
}


# ------------------------------------------------------------------------------------------------ attribution


@pytest.mark.parametrize("name", list(CONFIGS))
def test_side_by_side_forward_equals_the_model(name: str) -> None:
    backbone, overrides = CONFIGS[name]
    model, batcher = build_tiny(backbone, **overrides)
    batch = batcher(TINY_ROWS)
    flat = flatten_fields(batch["fields"], model.fields)
    forward = FieldsLogit(model)
    with torch.no_grad():
        expected = model(batch["fields"])
        got = forward(
            flat.input_ids, flat.sink_signal_ids, flat.attention_mask, flat.token_roles, flat.layout
        )
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    # the per-field lookup is back to the backbone's own embedding module
    assert model.backbone.word_embeddings() is model.backbone.model.get_input_embeddings()
    assert "word_embeddings" not in vars(model.backbone)


def baseline_fields(model, batch, pad_id: int, drop_signal: bool) -> dict:
    """The baseline input built by hand: pad ids but special tokens, and no sink signal when asked."""
    out = {}
    for f, t in batch["fields"].items():
        t = {k: v.clone() for k, v in t.items()}
        t["input_ids"] = baseline_ids(t["input_ids"], t["token_roles"], pad_id)
        if drop_signal and "sink_signal_ids" in t:
            t["sink_signal_ids"].fill_(-1)
        out[f] = t
    return out


@pytest.mark.parametrize(
    "name,layer",
    [
        ("bert+signal+inter_sink", "inputs_embeds"),
        ("bert+signal+inter_sink", "word_embeddings"),
        ("bert, no sink", "inputs_embeds"),
        ("qwen2+signal", "inputs_embeds"),
    ],
)
def test_integrated_gradients_completeness_within_delta(name: str, layer: str) -> None:
    backbone, overrides = CONFIGS[name]
    model, batcher = build_tiny(backbone, **overrides)
    batch = batcher(TINY_ROWS)
    # scratch Qwen's pad row is all zeros (padding_idx): RMSNorm is stiff there, so take another baseline token
    base_token = batcher.pad_id if not model.causal else int(batcher.renderer.tok.convert_tokens_to_ids(";"))
    res = integrated_gradients(
        model, batch["fields"], base_token, layer=layer, n_steps=48, internal_batch_size=48
    )
    diff = (res.logit - res.reference_logit).double()
    total = res.attr.double().sum(1)
    # captum's delta is sum(attr) - (f(x) - f(x')); the gap is within it, and it is small
    torch.testing.assert_close(total - diff, res.delta.double(), rtol=0, atol=1e-5)
    assert (total - diff).abs().le(res.delta.double().abs() + 1e-5).all()
    assert float(res.delta.abs().max()) < 5e-3 and float(diff.abs().max()) > 1e-3
    with torch.no_grad():
        torch.testing.assert_close(res.logit, model(batch["fields"]), rtol=0, atol=1e-6)
        reference = model(baseline_fields(model, batch, base_token, drop_signal=layer == "inputs_embeds"))
    torch.testing.assert_close(res.reference_logit, reference, rtol=0, atol=1e-6)
    roles = res.flat.token_roles
    assert float(res.attr[res.flat.attention_mask == 0].abs().max()) == 0.0
    if layer == "word_embeddings" and model.signal is not None:  # sink rows are overwritten after the lookup
        assert float(res.attr[roles == ROLE_ID["sink"]].abs().max()) == 0.0
    if layer == "inputs_embeds" and model.signal is not None:
        assert float(res.attr[roles == ROLE_ID["sink"]].abs().max()) > 0.0


def test_zero_pad_row_on_a_decoder_is_warned(caplog: pytest.LogCaptureFixture) -> None:
    model, batcher = build_tiny("scratch:qwen2-tiny")
    with caplog.at_level(logging.WARNING, logger="sinkviz.attribution"):
        integrated_gradients(model, batcher(TINY_ROWS[:1])["fields"], batcher.pad_id, n_steps=4)
    assert "all-zero embedding" in caplog.text


def test_behavior_sums_equal_token_sums_and_rows_per_behavior() -> None:
    model, batcher = build_tiny("scratch:bert-tiny", sink_signal="time_gap", inter_sink=True)
    result = attribute_rows(model, batcher, TINY_ROWS, n_steps=16, batch_size=2, internal_batch_size=16)
    beh, tok = result.behaviors, result.tokens
    assert list(beh.columns) == list(COLUMNS)
    lig = beh[beh["method"] == "integrated_gradients"]
    sums = tok.groupby(["sample_id", "field", "behavior", "role"])["attr"].sum()
    abs_sums = tok.assign(a=tok["attr"].abs()).groupby(["sample_id", "field", "behavior", "role"])["a"].sum()
    keyed = lig.set_index(["sample_id", "field", "behavior", "role"])
    np.testing.assert_allclose(keyed["attr_sum"], sums.loc[keyed.index], rtol=0, atol=1e-9)
    np.testing.assert_allclose(keyed["attr_abs"], abs_sums.loc[keyed.index], rtol=0, atol=1e-9)
    assert sums.index.isin(keyed.index).all()  # nothing dropped
    # per sample: one delta; behavior rows add up to f(x) - f(x') + delta
    per = lig.groupby("sample_id").agg(total=("attr_sum", "sum"), delta=("delta", "first"))
    ref = lig.groupby("sample_id")[["logit", "reference_logit"]].first()
    np.testing.assert_allclose(per["total"], ref["logit"] - ref["reference_logit"] + per["delta"], atol=1e-5)
    assert lig.groupby("sample_id")["delta"].nunique().eq(1).all()
    for r in TINY_ROWS:
        enc = batcher.encode(r)["enc"]
        for f in ("pos", "neg"):
            k = len(enc[f].behavior_spans)
            mine = lig[(lig["sample_id"] == r["sample_id"]) & (lig["field"] == f)]
            assert sorted(mine[mine["role"] == "behavior"]["behavior"]) == list(range(k))
            assert sorted(mine[mine["role"] == "sink"]["behavior"]) == enc[f].sink_behavior
            assert sorted(mine[mine["role"] == "separator"]["behavior"]) == list(range(max(k - 1, 0)))
            occ = beh[
                (beh["method"] == "occlusion") & (beh["sample_id"] == r["sample_id"]) & (beh["field"] == f)
            ]
            assert sorted(occ["behavior"]) == list(range(k))  # one removal per kept behavior
            assert occ["delta"].isna().all() and (occ["role"] == "behavior").all()
        # item fields: prompt, target and special rows only, behavior -1
        items_rows = lig[(lig["sample_id"] == r["sample_id"]) & lig["field"].isin(["title", "categories"])]
        assert (
            set(items_rows["role"]) == {"prompt", "target", "special"}
            and (items_rows["behavior"] == -1).all()
        )


def test_occlusion_removes_the_behavior_through_the_mask() -> None:
    model, batcher = build_tiny("scratch:bert-tiny")
    result = attribute_rows(model, batcher, TINY_ROWS[:1], n_steps=4)
    occ = result.behaviors.query("method == 'occlusion' and field == 'pos' and behavior == 1")
    batch = batcher(TINY_ROWS[:1])
    t = batch["fields"]["pos"]
    enc = batcher.encode(TINY_ROWS[0])["enc"]["pos"]
    start, end = enc.behavior_spans[1]
    drop = list(range(start, enc.behavior_spans[2][0]))  # behavior 1, its sink and its separator
    t["attention_mask"][0, drop] = 0
    t["token_roles"][0, drop] = ROLE_ID["padding"]
    with torch.no_grad():
        occluded = float(model(batch["fields"]))
    assert int(occ["n_tokens"].iloc[0]) == len(drop)
    assert float(occ["reference_logit"].iloc[0]) == pytest.approx(occluded, abs=1e-6)


def test_planted_behavior_ranks_first_for_both_methods() -> None:
    """Logit = w . mean of the pos field's embedding rows (no layers): additive in tokens. Tokens unique to pos
    behavior 2 get a row whose normalised embedding is w: both methods must rank behavior 2 first, positive."""
    model, batcher = build_tiny("scratch:bert-tiny")
    sample = TINY_ROWS[0]
    enc = batcher.encode(sample)["enc"]["pos"]
    start, end = enc.behavior_spans[2]
    elsewhere = set(enc.input_ids[:start]) | set(enc.input_ids[end:])
    planted = [t for t in enc.input_ids[start:end] if t not in elsewhere]
    assert planted
    u = torch.randn(model.backbone.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.backbone.word_embeddings().weight[planted] = 4 * u
        w = model.backbone.model.embeddings.LayerNorm(4 * u)
    w = w / w.norm()
    model.split_at = 0  # embedding rows only

    def readout(fields: dict, pooling: str = "all_tokens", embeds: dict | None = None) -> torch.Tensor:
        return model.encode_field("pos", fields["pos"], pooling, (embeds or {}).get("pos")) @ w

    model.forward = readout
    beh = attribute_rows(model, batcher, [sample], n_steps=32).behaviors
    rows = beh[(beh["field"] == "pos") & (beh["role"] == "behavior")]
    for method in ("integrated_gradients", "occlusion"):
        part = rows[rows["method"] == method].set_index("behavior")["attr_sum"]
        assert part.idxmax() == 2 and part[2] > 0, (method, part.to_dict())
        assert part[2] > 2 * part.drop(2).abs().max()
    assert abs(float(rows["delta"].dropna().iloc[0])) < 1e-3


# ------------------------------------------------------------------------------------------------ small runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A baseline and a CTR-Sink run (1 epoch, 64 samples), their analyses, and attributions of the sink run."""
    from ctrsink.config import load_config
    from ctrsink.data import prepare
    from ctrsink.train import train
    from sinkviz import capture_run

    tmp = tmp_path_factory.mktemp("sinkviz_views")
    data = tmp / "data"
    prepare("csv", REPO / "sample_data" / "synthetic", data)
    common = ["train_samples=64", "eval_samples=32", "epochs=1", "num_behaviors=5", "scratch_hidden=32"]
    common.append("scratch_vocab_size=500")
    out = {"data": data}
    for name, extra in (
        ("base", ["use_sink=false"]),
        ("sink", ["use_sink=true", "sink_signal=time_gap", "inter_sink=true"]),
    ):
        train(data, load_config(None, common + extra), tmp / name)
        out[name] = tmp / name
        out[f"an_{name}"] = capture_run(
            tmp / name, data, "test", 16, tmp / f"an_{name}", batch_size=8, full_maps=2
        )
    args = ["attribute", "--run", str(out["sink"]), "--samples", "4", "--n-steps", "8", "--batch-size", "2"]
    assert main(args + ["--out", str(out["an_sink"])]) == 0
    return out


def test_attribute_cli_writes_parquet(runs: dict[str, Path]) -> None:
    folder = runs["an_sink"]
    beh = pd.read_parquet(folder / "attributions.parquet")
    tok = pd.read_parquet(folder / "attribution_tokens.parquet")
    meta = json.loads((folder / "attributions.json").read_text())
    assert list(beh.columns) == list(COLUMNS) and beh["sample_id"].nunique() == 4
    assert set(beh["method"]) == {"integrated_gradients", "occlusion"} and set(beh["n_steps"]) == {8, 1}
    assert meta["layer"] == "inputs_embeds" and meta["samples"] == 4 and meta["max_abs_delta"] < 0.05
    assert np.isclose(tok["attr"].sum(), beh.query("method == 'integrated_gradients'")["attr_sum"].sum())
    assert not list(folder.glob(".*.tmp"))  # atomic writes leave no temporary files
    assert (folder / "manifest.json").is_file()  # the analysis folder is still readable as before


def assert_offline(page: str) -> None:
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"(?i)<(script|link|img|iframe)\b[^>]*\b(src|href)\s*=", page)  # nothing loaded
    assert "cdnjs" not in page and not re.search(r"require\.config\(\{\s*paths", page)
    assert "d3js.org v5.7.0" in page and "jQuery v2.2.4" in page and "RequireJS 2.3.6" in page
    assert "define('d3', [], () => window.d3)" in page and "define('jquery', [], () => window.jQuery)" in page
    order = [page.index(s) for s in ("d3js.org v5.7.0", "jQuery v2.2.4", "RequireJS 2.3.6", "define('d3'")]
    assert order == sorted(order)  # d3 and jQuery as plain scripts before require.js, then the shim
    assert page.lower().count("</script") == 5  # d3, jQuery, require.js, the shim, bertviz: no early close


def test_bertviz_pages_are_offline_and_capped(runs: dict[str, Path]) -> None:
    from sinkviz import load_analysis

    analysis = load_analysis(runs["an_sink"])
    d3 = (VENDOR / "d3.min.js").read_text(encoding="utf-8").replace("://", ":\\/\\/")  # as inlined
    token = analysis_view(analysis, level="token", max_tokens=12)
    assert len(token.labels) == 12 and token.note and "capped at 12 tokens" in token.note
    for kind in ("head", "model"):
        page = view_html(token, kind)
        assert_offline(page)
        assert d3[1000:3000] in page  # d3 inlined
        assert "capped at 12 tokens" in page  # the note is visible
    behavior = analysis_view(analysis, level="behavior")
    assert any(lbl.startswith("[sink") for lbl in behavior.labels)
    for m in behavior.attention:
        np.testing.assert_allclose(m.sum(-1), 1.0, atol=1e-5)
    assert_offline(view_html(behavior, "head"))
    dataset = analysis_view(analysis, level="dataset")
    assert dataset.labels[0] == "b0"
    # hostile labels stay inside their script: no early </script>, no URL text
    hostile = AttentionView([np.full((1, 3, 3), 1 / 3)], ["</script>", "http://x.example", "ok"], [0], "t")
    assert_offline(view_html(hostile, "head"))


def test_vendored_libraries_match_their_record_and_licenses() -> None:
    readme = (VENDOR / "README.md").read_text(encoding="utf-8")
    for name in ("d3.min.js", "jquery.min.js", "require.js"):
        digest = hashlib.sha256((VENDOR / name).read_bytes()).hexdigest()
        assert digest in readme, name
    for name in ("LICENSE.d3.txt", "LICENSE.jquery.txt", "LICENSE.requirejs.txt"):
        assert (VENDOR / name).stat().st_size > 500


def test_views_cli_writes_pages_and_index(runs: dict[str, Path], tmp_path: Path) -> None:
    assert main(["views", "--analysis", str(runs["an_base"]), "--out", str(tmp_path), "--field", "pos"]) == 0
    pages = sorted(p.name for p in tmp_path.glob("*.html"))
    assert "index.html" in pages and "dataset_head_pos.html" in pages
    assert any(p.startswith("token_model_pos_s") for p in pages)
    for p in tmp_path.glob("*.html"):
        text = p.read_text(encoding="utf-8")
        assert "http://" not in text and "https://" not in text


def test_plotly_builders(runs: dict[str, Path]) -> None:
    from sinkviz import load_analysis

    base, sink = load_analysis(runs["an_base"]), load_analysis(runs["an_sink"])
    mass = mass_by_layer(sink["role_mass"])
    assert set(mass["key_role"]) >= {"sink", "separator", "behavior"}
    np.testing.assert_allclose(mass.groupby("layer")["mass"].sum(), 1.0, atol=1e-5)
    fig = role_mass_figure({"baseline": base["role_mass"], "CTR-Sink": sink["role_mass"]})
    names = {t.name for t in fig.data}
    assert {"CTR-Sink: sink", "baseline: separator", "CTR-Sink: behavior"} <= names
    heat = inter_sink_heatmap(sink["inter_sink"], layer=0, field="pos")
    assert heat.data[0].type == "heatmap" and np.asarray(heat.data[0].z).shape[0] >= 2
    bars = attribution_bar(pd.read_parquet(runs["an_sink"] / "attributions.parquet"))
    assert {t.name for t in bars.data} == {"integrated_gradients", "occlusion"}


# ------------------------------------------------------------------------------------------------ figures


def ablation_table() -> pd.DataFrame:
    rows = []
    for variant, base in (("baseline", 0.60), ("sink", 0.62), ("full", 0.64)):
        for seed in (1, 2):
            stages = [(0, "sink_only"), (1, "all_tokens")] if variant == "full" else [(0, "all_tokens")]
            stages += [(2, "all_tokens")]
            for epoch, stage in stages:
                for pooling in ["all_tokens", "sink_only"] if stage == "sink_only" else ["all_tokens"]:
                    rows.append((variant, seed, stage, epoch, "valid", pooling, base + 0.01 * epoch))
            rows.append((variant, seed, "best", 2, "test", "all_tokens", base + 0.01 * seed))
    frame = pd.DataFrame(rows, columns=["variant", "seed", "stage", "epoch", "split", "pooling", "auc"])
    return frame.assign(logloss=0.6, gauc=0.6, calibration=1.0, n=100, train_seconds=1.0)


def assert_figures(folder: Path, names: list[str]) -> None:
    for name in names:
        png, pdf = folder / f"{name}.png", folder / f"{name}.pdf"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000, name
        assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 1000, name


def test_figures_from_small_runs(runs: dict[str, Path], tmp_path: Path) -> None:
    from sinkviz.figures import make_figures

    written = make_figures(runs["an_sink"], tmp_path, compare=runs["an_base"])
    assert_figures(tmp_path, ["role_mass", "inter_sink", "fragmentation", "attributions"])
    assert len(written) == 8 and not (tmp_path / "ablation_auc.png").exists()


def test_figures_cli_with_a_hand_written_ablation(runs: dict[str, Path], tmp_path: Path) -> None:
    from sinkviz.figures import ablation_summary

    abl = tmp_path / "abl"
    abl.mkdir()
    table = ablation_table()
    table.to_parquet(abl / "ablation.parquet", index=False)
    summary = ablation_summary(table).set_index(["variant", "stage"])
    assert summary.loc[("sink", "test (best epoch)"), "auc_mean"] == pytest.approx(0.635)
    assert summary.loc[("full", "valid, all_tokens epochs"), "auc_mean"] == pytest.approx(0.66)
    assert summary.loc[("full", "valid, sink_only epochs, sink_only pooling"), "seeds"] == 2
    assert ("baseline", "valid, sink_only epochs") not in summary.index
    out = tmp_path / "figs"
    args = ["figures", "--analysis", str(runs["an_base"]), "--ablation", str(abl), "--out", str(out)]
    assert main(args) == 0
    assert_figures(out, ["role_mass", "inter_sink", "fragmentation", "ablation_auc"])
    assert not (out / "attributions.png").exists()  # the baseline analysis has no attribution table
    assert main(["figures", "--analysis", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()

"""The Streamlit dashboard under AppTest, on a small fixture root laid out like runs/demo (tests/app_fixture.py).

Every page is opened and its charts' data are checked against the artifacts (not only that something rendered);
discovery finds analyses wherever the toolkit writes them and attributes each to its run; empty, unknown-schema and
broken-artifact states; the what-if rescoring equals `score_rows` on the edited row; a `behavior_selection=
similarity` run marks and attributes the behaviors the model kept (from the analysis' `kept` table, or the run's
batcher for older analyses); the ablation toggles start a real background `ctrsink ablate` whose results the page
then shows. Refusals (paths outside the root, free-text overrides, read-only) are in test_app_safety.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from app_fixture import (
    ABLATION_SEEDS,
    ANALYSIS,
    CAPTURE_SAMPLES,
    FULL_MAPS,
    TINY,
    decoded,
    relocate,
    session_root,
    set_manifest,
)
from streamlit.testing.v1 import AppTest

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "app" / "app.py"
sys.path.insert(0, str(APP.parent))  # the app's own modules (discover, jobs, charts, samples)

import charts  # noqa: E402
import discover  # noqa: E402
import jobs  # noqa: E402

torch.set_num_threads(1)
PAGES = {
    "runs": "views/runs.py",
    "attention": "views/attention.py",
    "inter_sink": "views/inter_sink.py",
    "ablations": "views/ablations.py",
    "explorer": "views/explorer.py",
}


@pytest.fixture(scope="session")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return session_root(tmp_path_factory.getbasetemp())


def open_page(root: Path, page: str, prepare=None) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=120)
    at.session_state["root"] = str(root)
    if prepare:
        prepare(at)
    at.switch_page(PAGES[page]).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def figures(at: AppTest) -> list[dict]:
    """Each plotly chart's figure JSON (data and layout), arrays decoded."""
    return [decoded(json.loads(el.proto.spec)) for el in at.get("plotly_chart")]


def traces(fig: dict) -> dict[str, dict]:
    return {t.get("name", ""): t for t in fig["data"]}


def text_of(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.code] + [c.value for c in at.caption]
    parts += [e.value for e in at.error] + [i.value for i in at.info] + [w.value for w in at.warning]
    return "\n".join(str(p) for p in parts)


# ------------------------------------------------------------------------------------------------ discovery


def test_discovery_classifies_the_fixture(root: Path) -> None:
    found = discover.find_artifacts(root)
    assert [r.name for r in found.standalone_runs()] == ["baseline", "ctrsink"]
    members = [r for r in found.runs if r.group == "ablation"]
    assert len(members) == 2 * len(ABLATION_SEEDS)
    assert [a.name for a in found.ablations] == ["ablation"]
    # analyses inside run folders (where scripts/main.sh writes them), each attributed to its run
    assert [a.name for a in found.analyses] == ["baseline/analysis", "ctrsink/analysis"]
    assert [a.run for a in found.analyses] == [(root / "baseline").resolve(), (root / "ctrsink").resolve()]
    assert [a.run_note for a in found.analyses] == [None, None]
    assert [d.name for d in found.data] == ["data"] and [a.name for a in found.attributions] == [
        "ctrsink/analysis"
    ]
    assert not found.refused
    assert not discover.find_artifacts(root / "missing").exists


def test_discovery_finds_analyses_where_the_toolkit_writes_them(tmp_path: Path) -> None:
    """The layout of scripts/main.sh (runs/demo): analyses inside run folders, inside an ablation's runs, and
    beside them (the comparison row's analysis of an ablation member), each attributed to its run."""
    root = tmp_path / "demo"

    def write(rel: str, record: dict | None = None) -> Path:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(json.dumps(record or {}))
        return (root / rel).parent

    def analysis(rel: str, run: Path | str, kind: str = "sinkviz.analysis") -> None:
        write(f"{rel}/manifest.json", {"kind": kind, "run_dir": str(run)})

    write("data/manifest.json", {"history_fields": ["pos", "neg"]})
    write("data/items.parquet")
    for run in ("baseline", "ctrsink", "ablation/runs/baseline/seed1", "ablation/runs/sparsectr_lite/seed1"):
        write(f"{run}/run.json")
    write("ablation/grid.json", {"variants": ["baseline", "sparsectr_lite"], "seeds": [1]})
    analysis("baseline/analysis", root / "baseline")
    analysis("ctrsink/analysis", "/moved/elsewhere/ctrsink")  # a stale path: the run folder holding it
    analysis("ablation/runs/baseline/seed1/analysis", root / "ablation/runs/baseline/seed1")
    analysis("sparsectr_lite/analysis", root / "ablation/runs/sparsectr_lite/seed1", kind="id_rows")
    analysis("compare/ctrsink", root / "ctrsink")  # beside the runs
    analysis("ctrsink/checkpoint/best/not_this", root / "ctrsink")  # model folders are never walked
    (root / "figures").mkdir()

    found = discover.find_artifacts(root)
    runs = {a.name: a.run.relative_to(root.resolve()).as_posix() for a in found.analyses + found.id_rows}
    assert runs == {
        "ablation/runs/baseline/seed1/analysis": "ablation/runs/baseline/seed1",
        "baseline/analysis": "baseline",
        "compare/ctrsink": "ctrsink",
        "ctrsink/analysis": "ctrsink",
        "sparsectr_lite/analysis": "ablation/runs/sparsectr_lite/seed1",
    }
    assert [a.name for a in found.id_rows] == ["sparsectr_lite/analysis"]
    stale = next(a for a in found.analyses if a.name == "ctrsink/analysis")
    assert "/moved/elsewhere/ctrsink" in stale.run_note and "using the run that holds it" in stale.run_note
    assert [r.name for r in found.standalone_runs()] == ["baseline", "ctrsink"]
    assert {r.name: r.group for r in found.runs if r.group} == {
        "ablation/runs/baseline/seed1": "ablation",
        "ablation/runs/sparsectr_lite/seed1": "ablation",
    }
    assert [d.name for d in found.data] == ["data"] and not found.refused


def test_cached_loader_is_keyed_on_mtime_and_size(root: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    for name in discover.RUN_FILES:
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / "baseline" / name, run / name)
    first = discover.load_run_record(tmp_path, run)
    assert discover.load_run_record(tmp_path, run) is not first or len(
        first.metrics
    )  # a cached copy of the same record
    with open(run / "metrics.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"epoch": 9, "stage": "all_tokens", "split": "valid", "auc": 0.5}) + "\n")
    assert len(discover.load_run_record(tmp_path, run).metrics) == len(first.metrics) + 1


# ------------------------------------------------------------------------------------------------ pages


def test_runs_page_shows_runs_and_metrics_per_epoch(root: Path) -> None:
    at = open_page(root, "runs")
    fig = traces(figures(at)[0])
    for run in ("baseline", "ctrsink"):
        metrics = pd.read_json(root / run / "metrics.jsonl", lines=True)
        valid = metrics[metrics["split"] == "valid"]
        assert fig[f"{run} · valid · all_tokens"]["y"] == pytest.approx(valid["auc"].tolist())
        test = metrics[metrics["split"] == "test"]
        assert fig[f"{run} · test at best epoch"]["y"] == pytest.approx(test["auc"].tolist())
    overview = at.dataframe[0].value
    assert overview["run"].tolist() == ["baseline", "ctrsink"]
    assert overview["use_sink"].tolist() == [False, True]
    final = json.loads((root / "ctrsink" / "final_metrics.json").read_text())
    assert overview["test AUC"].iloc[1] == pytest.approx(final["test"]["auc"])
    assert "ablation" in at.dataframe[-1].value["ablation"].tolist()
    # another metric: the chart follows
    at.radio(key="runs_metric").set_value("logloss").run()
    valid = pd.read_json(root / "baseline" / "metrics.jsonl", lines=True).query("split == 'valid'")
    assert traces(figures(at)[0])["baseline · valid · all_tokens"]["y"] == pytest.approx(
        valid["logloss"].tolist()
    )


def test_attention_page_compares_mass_per_layer_and_sink_metric(root: Path) -> None:
    from sinkviz import load_analysis
    from sinkviz.views import mass_by_layer

    at = open_page(root, "attention")
    mass, metric = figures(at)[:2]
    sink = load_analysis(root / "ctrsink" / "analysis")
    base = load_analysis(root / "baseline" / "analysis")
    expected = mass_by_layer(sink["role_mass"], ["pos", "neg"])
    t = traces(mass)
    for role in ("sink", "separator", "behavior", "prompt"):
        rows = expected[expected["key_role"] == role].sort_values("layer")
        assert t[f"ctrsink (CTR-Sink): {role}"]["y"] == pytest.approx(rows["mass"].tolist())
    assert not any(t["baseline (baseline): sink"]["y"])  # no sinks, no mass on them
    assert t["baseline (baseline): separator"]["y"][0] > 0
    # the sink metric: Sink_eps share per layer, n-weighted over heads and history fields
    rows = sink["sink_metric"].query("key == 'any_anchor' and field in ['pos', 'neg']")
    per_layer = rows.assign(w=rows["share"] * rows["n"]).groupby("layer")[["w", "n"]].sum()
    assert traces(metric)["ctrsink (CTR-Sink)"]["y"] == pytest.approx(
        (per_layer["w"] / per_layer["n"]).tolist()
    )
    assert set(traces(metric)) == {"ctrsink (CTR-Sink)", "baseline (baseline)"}

    # one head, then the per-head heatmap on demand
    at.selectbox(key="mass_head").set_value(1).run()
    one = sink["role_mass"].query("head == 1")
    rows = mass_by_layer(one, ["pos", "neg"]).query("key_role == 'sink'")
    assert traces(figures(at)[0])["ctrsink (CTR-Sink): sink"]["y"] == pytest.approx(rows["mass"].tolist())
    at.selectbox(key="mass_head").set_value("mean").run()
    at.toggle(key="mass_per_head").set_value(True).run()
    at.selectbox(key="mass_head_role").set_value("separator").run()
    heat = [f for f in figures(at) if f["data"][0]["type"] == "heatmap"]
    assert len(heat) == 2
    grid = charts.head_mass_frame(base["role_mass"], "separator", ["pos", "neg"])
    z = np.array(heat[0]["data"][0]["z"], dtype=float)
    assert z.shape == (base.manifest["lower_layers"], base.manifest["heads"])
    np.testing.assert_allclose(z, grid.to_numpy(), rtol=1e-6)


def test_inter_sink_page_aggregated_and_one_sample(root: Path) -> None:
    from sinkviz import load_analysis
    from sinkviz.views import inter_sink_frame

    at = open_page(root, "inter_sink")
    analysis = load_analysis(root / "ctrsink" / "analysis")
    titled = {f["layout"]["title"]["text"]: f for f in figures(at)}
    agg = titled["Inter-sink attention, layer 0, mean over heads"]
    expected = inter_sink_frame(analysis["inter_sink"], 0, "pos")
    np.testing.assert_allclose(np.array(agg["data"][0]["z"], dtype=float), expected.to_numpy(), rtol=1e-6)
    assert agg["data"][0]["x"] == [f"sink {k}" for k in expected.columns]

    # one sample: attention among its sinks, axes with behavior titles and time gaps
    sid = analysis.manifest["full_map_samples"][0]
    one = titled[f"Sample {sid}: inter-sink attention, layer 0, mean over heads"]
    assert len(titled) == 2 * analysis.manifest["lower_layers"]  # aggregated and one sample, per token layer
    tokens = analysis["tokens"].query("sample_id == @sid and field == 'pos'").sort_values("position")
    sinks = tokens[tokens["role"] == "sink"].sort_values("behavior_index")
    attn = analysis.full_maps[(sid, "pos", 0)].mean(0)
    pos = sinks["position"].to_numpy()
    np.testing.assert_allclose(np.array(one["data"][0]["z"], dtype=float), attn[np.ix_(pos, pos)], rtol=1e-5)
    row = pd.read_parquet(root / "data" / "test.parquet").set_index("sample_id").loc[sid]
    items = pd.read_parquet(root / "data" / "items.parquet").set_index("item_idx")
    n_kept = tokens.loc[tokens["behavior_index"] >= 0, "behavior_index"].max() + 1
    newest_kept = int(row["pos_item_idx"][len(row["pos_item_idx"]) - n_kept])  # behavior 0 = oldest kept
    label = one["data"][0]["y"][0]
    assert label.startswith("0: ") and "before" in label
    assert items.at[newest_kept, "title"].split(" (")[0].lower()[:10] in label.lower()


def test_ablations_page_intervals_and_difference_to_baseline(root: Path) -> None:
    from ctrsink.ablate import summary_table

    at = open_page(root, "ablations")
    table = pd.read_parquet(root / "ablation" / "ablation.parquet")
    stage, diff = figures(at)[:2]
    t = traces(stage)
    assert {
        "valid · sink_only",
        "valid · sink_only (sink_only pooling)",
        "valid · all_tokens",
        "test · best epoch",
    } <= set(t)
    test = table.query("split == 'test' and stage == 'best'")
    for variant in ("baseline", "sink+signal+two_stage"):
        values = test[test["variant"] == variant]["auc"].to_numpy()
        mean, half, _ = charts.interval(values)
        i = t["test · best epoch"]["x"].index(variant)
        assert t["test · best epoch"]["y"][i] == pytest.approx(mean)
        assert t["test · best epoch"]["error_y"]["array"][i] == pytest.approx(half)
    summary = summary_table(table).set_index("variant")
    d = traces(diff)["Δ AUC"]
    assert d["x"] == ["sink+signal+two_stage"]
    assert d["y"][0] == pytest.approx(summary.at["sink+signal+two_stage", "auc_diff"])
    at.radio(key="abl_metric").set_value("gauc").run()
    assert traces(figures(at)[1])["Δ gAUC"]["y"][0] == pytest.approx(
        summary.at["sink+signal+two_stage", "gauc_diff"]
    )
    p = jobs.progress(root, root / "ablation")  # read from the grid and the runs' metrics.jsonl lines
    assert (p.state, p.runs_done, p.runs_total, p.fraction) == ("finished", 4, 4, 1.0)


def test_explorer_page_timeline_attributions_maps_and_bertviz(root: Path) -> None:
    from sinkviz import load_analysis
    from sinkviz.attribution import load_attributions

    at = open_page(root, "explorer")
    analysis = load_analysis(root / "ctrsink" / "analysis")
    sid = analysis.manifest["full_map_samples"][0]
    figs = figures(at)
    timeline, bar, token_map = figs[0], figs[1], figs[2]
    attr = load_attributions(root / "ctrsink" / "analysis")
    ig = attr.query("sample_id == @sid and role == 'behavior' and method == 'integrated_gradients'")
    seen = traces(timeline)["seen by the model"]
    assert sorted(seen["marker"]["color"]) == pytest.approx(sorted(ig["attr_sum"].tolist()))
    assert {t["name"] for t in bar["data"]} == {"integrated_gradients", "occlusion"}
    attn = analysis.full_maps[(sid, "pos", 0)].mean(0)
    np.testing.assert_allclose(np.array(token_map["data"][0]["z"], dtype=float), attn, rtol=1e-5)
    tokens = analysis["tokens"].query("sample_id == @sid and field == 'pos'")
    assert len(token_map["data"][0]["x"]) == len(tokens)
    frames = at.get("iframe")
    assert len(frames) == 1
    page = frames[0].proto.srcdoc
    assert "d3js.org v5.7.0" in page and "https://" not in page and "[sink" in page  # behavior-level labels
    captured = float(analysis["predictions"].set_index("sample_id").at[sid, "logit"])
    assert at.metric[1].value == f"{captured:.4f}"


def test_what_if_edit_changes_the_score_and_equals_score_rows(root: Path) -> None:
    from ctrsink.run import load_run, score_rows

    at = open_page(root, "explorer")
    keys = [e.key for e in at.data_editor]
    assert len(keys) == 2 and keys[0].endswith("|pos")
    doc = json.loads(at.json[0].value)
    assert doc["edited_logit"] == pytest.approx(doc["original_logit"], abs=1e-6)  # no edits yet
    sid = doc["row"]["sample_id"]
    captured = pd.read_parquet(root / "ctrsink" / "analysis" / "predictions.parquet").set_index("sample_id")
    assert doc["original_logit"] == pytest.approx(float(captured.at[sid, "logit"]), abs=1e-5)
    row = (
        pd.read_parquet(root / "data" / "test.parquet").set_index("sample_id", drop=False).loc[sid].to_dict()
    )
    n_pos, n_neg = len(row["pos_item_idx"]), len(row["neg_item_idx"])
    assert n_pos >= 2, "the fixture sample needs two positive behaviors to edit"
    at.session_state[keys[0]] = {  # drop the newest pos behavior, swap the next two, add one
        "edited_rows": {n_pos - 2: {"position": n_pos - 3}, n_pos - 3: {"position": n_pos - 2}},
        "added_rows": [{"position": 100, "item_idx": 7, "hours_before": 2.5}],
        "deleted_rows": [n_pos - 1],
    }
    if n_neg:
        at.session_state[keys[1]] = {
            "edited_rows": {n_neg - 1: {"hours_before": 0.5}},
            "added_rows": [],
            "deleted_rows": [],
        }
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    doc = json.loads(at.json[0].value)

    expected = dict(row)
    idx = list(row["pos_item_idx"][: n_pos - 1])
    ts = list(row["pos_timestamp"][: n_pos - 1])
    if n_pos >= 3:
        idx[-2], idx[-1], ts[-2], ts[-1] = idx[-1], idx[-2], ts[-1], ts[-2]
    expected["pos_item_idx"] = np.array(idx + [7])
    expected["pos_timestamp"] = np.array(ts + [int(row["timestamp"]) - 9000])
    expected["pos_label"] = np.ones(n_pos, dtype=np.int64)
    if n_neg:
        neg_ts = np.array(row["neg_timestamp"], dtype=np.int64)
        neg_ts[-1] = int(row["timestamp"]) - 1800
        expected["neg_timestamp"] = neg_ts
    assert doc["row"]["pos_item_idx"] == expected["pos_item_idx"].tolist()
    assert doc["row"]["pos_timestamp"] == expected["pos_timestamp"].tolist()
    bundle = load_run(root / "ctrsink")
    want = float(score_rows(bundle, [expected])[0])
    assert doc["edited_logit"] == pytest.approx(want, abs=1e-5)
    assert abs(doc["edited_logit"] - doc["original_logit"]) > 1e-6
    assert at.metric[-2].value == f"{want:.4f}"  # the what-if metric shows the same score


# ------------------------------------------------------------------------------------------------ selection rules


@pytest.fixture(scope="module")
def similarity_root(root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny sink run that keeps the behaviors most similar to the target (MiniLM item vectors), captured and
    attributed inside its run folder: SIM/data, SIM/sim, SIM/sim/analysis."""
    from ctrsink.config import load_config
    from ctrsink.train import train
    from sinkviz import capture_run
    from sinkviz.attribution import attribute_run

    out = tmp_path_factory.mktemp("similarity")
    shutil.copytree(root / "data", out / "data")
    cfg = load_config(None, [*TINY, "epochs=1", "behavior_selection=similarity", "use_sink=true"])
    train(out / "data", cfg, out / "sim")
    analysis = out / "sim" / ANALYSIS
    capture_run(out / "sim", out / "data", "test", CAPTURE_SAMPLES, analysis, full_maps=FULL_MAPS)
    attribute_run(out / "sim", out / "data", "test", CAPTURE_SAMPLES, analysis, n_steps=4)
    return out


def expected_kept(root: Path) -> tuple[dict[int, dict[str, list[int]]], pd.DataFrame]:
    """{sample_id: kept behaviors} from the run's own batcher for the captured samples, and the test split."""
    from ctrsink.api import kept_behaviors, load_run

    bundle = load_run(root / "sim")
    split = pd.read_parquet(root / "data" / "test.parquet").set_index("sample_id", drop=False)
    preds = pd.read_parquet(root / "sim" / ANALYSIS / "predictions.parquet")
    return {int(s): kept_behaviors(bundle, split.loc[s].to_dict()) for s in preds["sample_id"]}, split


def recent(row: pd.Series, fld: str, kept: list[int]) -> list[int]:
    n = len(row[f"{fld}_item_idx"])
    return list(range(n - len(kept), n))


def test_capture_records_the_kept_behaviors_of_a_similarity_run(similarity_root: Path) -> None:
    from sinkviz import load_analysis

    table = load_analysis(similarity_root / "sim" / ANALYSIS)["kept"]
    want, split = expected_kept(similarity_root)
    got = {
        int(s): {f: p.sort_values("behavior")["stored_index"].tolist() for f, p in part.groupby("field")}
        for s, part in table.groupby("sample_id")
    }
    assert got == {s: {f: k for f, k in kept.items() if k} for s, kept in want.items()}
    differs = [s for s, kept in want.items() if any(k != recent(split.loc[s], f, k) for f, k in kept.items())]
    assert differs, "the similarity run should keep other behaviors (or another order) than the recent rule"


def explorer_on_reordered_sample(root: Path) -> tuple[AppTest, int, dict[str, list[int]], pd.Series]:
    """The explorer on an attributed sample whose kept behaviors differ from the most recent ones."""
    from sinkviz.attribution import load_attributions

    want, split = expected_kept(root)
    attributed = set(load_attributions(root / "sim" / ANALYSIS)["sample_id"].astype(int))
    sid = next(
        s
        for s, kept in want.items()
        if s in attributed and any(k != recent(split.loc[s], f, k) for f, k in kept.items())
    )
    at = open_page(root, "explorer")
    at.selectbox(key="ex_sample").set_value(sid).run()
    assert not at.exception, [e.value for e in at.exception]
    return at, sid, want[sid], split.loc[sid]


def assert_timeline_marks(
    at: AppTest, root: Path, sid: int, kept: dict[str, list[int]], row: pd.Series
) -> None:
    """'seen by the model' = exactly the kept stored behaviors, each coloured by its own attribution."""
    from sinkviz.attribution import load_attributions

    attr = load_attributions(root / "sim" / ANALYSIS)
    ig = attr.query("sample_id == @sid and role == 'behavior' and method == 'integrated_gradients'")
    ig = ig.set_index(["field", "behavior"])["attr_sum"]
    want = {}
    for fld, stored in kept.items():
        for k, j in enumerate(stored):
            days = -(int(row["timestamp"]) - int(row[f"{fld}_timestamp"][j])) / 86400
            want[(fld, round(days, 9))] = float(ig.get((fld, k), 0.0))
    seen = traces(figures(at)[0])["seen by the model"]
    got = {(f, round(x, 9)): c for f, x, c in zip(seen["y"], seen["x"], seen["marker"]["color"])}
    assert got.keys() == want.keys()
    assert got == pytest.approx(want)


def test_explorer_marks_the_behaviors_a_similarity_run_kept(similarity_root: Path) -> None:
    at, sid, kept, row = explorer_on_reordered_sample(similarity_root)
    assert_timeline_marks(at, similarity_root, sid, kept, row)
    text = text_of(at)
    assert "most similar to the target" in text and "predates" not in text


def test_inter_sink_axes_name_the_kept_behaviors_of_a_similarity_run(similarity_root: Path) -> None:
    from sinkviz import load_analysis

    at = open_page(similarity_root, "inter_sink")
    analysis = load_analysis(similarity_root / "sim" / ANALYSIS)
    sid = analysis.manifest["full_map_samples"][0]
    want, split = expected_kept(similarity_root)
    row, stored = split.loc[sid], want[sid]["pos"]
    one = next(f for f in figures(at) if f["layout"]["title"]["text"].startswith(f"Sample {sid}:"))
    for k, label in enumerate(one["data"][0]["y"]):
        hours = (int(row["timestamp"]) - int(row["pos_timestamp"][stored[k]])) / 3600
        assert label.startswith(f"{k}: ") and f"{charts.format_gap(hours)} before" in label


def test_old_analysis_without_kept_table_falls_back_with_a_note(
    similarity_root: Path, tmp_path: Path
) -> None:
    old = tmp_path / "old"
    shutil.copytree(similarity_root, old)
    relocate(old / "sim", old / "data")
    folder = old / "sim" / ANALYSIS
    tables = json.loads((folder / "manifest.json").read_text())["tables"]
    tables.pop("kept")
    set_manifest(folder, schema_version=1, tables=tables)
    (folder / "kept.parquet").unlink()
    at, sid, kept, row = explorer_on_reordered_sample(old)
    assert "predates the `kept` table" in text_of(at) and "the run's own batcher" in text_of(at)
    assert_timeline_marks(at, old, sid, kept, row)  # the model's batcher gives the same, right, marks
    shutil.rmtree(old / "sim" / "checkpoint")  # no model either: the most recent ones, said so
    at = open_page(old, "explorer")
    assert "assumes the most recent behaviors (this run selects by similarity" in text_of(at)


# ------------------------------------------------------------------------------------------------ ablation launch


@pytest.fixture
def launch_root(root: Path, tmp_path: Path) -> Path:
    out = tmp_path / "launch_root"
    shutil.copytree(root / "data", out / "data")
    return out


def test_ablation_toggles_match_variants() -> None:
    assert jobs.variant_for({"use_sink": False, "sink_signal": "index", "two_stage": True}) == "baseline"
    assert jobs.variant_for({"use_sink": True, "sink_signal": "index"}) == "signal:index"
    assert (
        jobs.variant_for({"use_sink": True, "sink_signal": "time_gap", "two_stage": True, "inter_sink": True})
        == "full"
    )
    assert jobs.variant_for({"use_sink": True, "sink_signal": "index", "two_stage": True}) is None


def test_ablation_toggle_starts_background_run_and_shows_results(launch_root: Path) -> None:
    at = open_page(launch_root, "ablations")
    assert "No ablation found" in text_of(at)
    # a combination no variant covers: explained, nothing to start
    at.selectbox(key="abl_signal").set_value("index").run()
    at.toggle(key="abl_two_stage").set_value(True).run()
    assert "No named variant" in text_of(at)
    assert not [b for b in at.button if b.key == "abl_start"]
    at.toggle(key="abl_two_stage").set_value(False).run()
    at.checkbox(key="abl_with_baseline").uncheck().run()
    at.text_area(key="abl_overrides").input(
        "train_samples=32\neval_samples=32\nepochs=1\nnum_behaviors=3\nscratch_hidden=16\n"
        "scratch_vocab_size=300\nnum_threads=1"
    ).run()
    at.text_input(key="abl_out").input("toggle").run()
    assert "--variants signal:index" in text_of(at)
    at.button(key="abl_start").click().run()
    assert not at.exception, [e.value for e in at.exception]

    out = launch_root / "toggle"
    record = json.loads((out / discover.LAUNCH_FILE).read_text())
    cmd = record["command"]
    assert cmd[1:4] == ["-m", "ctrsink", "ablate"] and cmd[cmd.index("--variants") + 1] == "signal:index"
    assert cmd[cmd.index("--out") + 1] == str(out.resolve()) and "num_threads=1" in cmd
    assert (out / jobs.LOG_FILE).is_file()
    assert jobs.wait(out, timeout=240) == 0, jobs.log_tail(launch_root, out)

    at.run()
    assert not at.exception
    assert at.selectbox(key="abl_selected").value == "toggle"
    fig = traces(figures(at)[0])
    assert fig["test · best epoch"]["x"] == ["signal:index"]
    table = pd.read_parquet(out / "ablation.parquet")
    test_auc = table.query("split == 'test' and stage == 'best'")["auc"].iloc[0]
    assert fig["test · best epoch"]["y"][0] == pytest.approx(test_auc)
    assert jobs.progress(launch_root, out).state == "finished"


def test_a_grid_started_from_a_shell_counts_as_running(tmp_path: Path) -> None:
    out = tmp_path / "abl"
    out.mkdir()
    # a stand-in process whose command line reads like `ctrsink ablate ... --out abl`, with a relative --out
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)", "ablate", "--out", "abl"]
    proc = subprocess.Popen(sleeper, cwd=tmp_path)
    try:
        deadline = time.time() + 10  # the child's command line is visible only once it has started
        while jobs.cli_process(out) is None and time.time() < deadline:
            time.sleep(0.1)
        assert jobs.cli_process(out) == proc.pid and jobs.progress(tmp_path, out).state == "running"
    finally:
        proc.kill()
        proc.wait()
    assert jobs.cli_process(out) is None and jobs.progress(tmp_path, out).state == "incomplete"


# ------------------------------------------------------------------------------------------------ empty, broken


@pytest.mark.parametrize("page", list(PAGES))
def test_empty_root_explains_what_to_run(page: str, tmp_path: Path) -> None:
    at = open_page(tmp_path, page)
    text = text_of(at)
    command = {
        "runs": "ctrsink demo --out",
        "attention": "sinkviz capture --run",
        "inter_sink": "sinkviz capture --run",
        "ablations": "ctrsink ablate --data",
        "explorer": "sinkviz capture --run",
    }[page]
    assert command in text, text
    assert not at.get("plotly_chart")


@pytest.fixture
def broken_root(root: Path, tmp_path: Path) -> Path:
    """Good artifacts next to an unknown schema version, a damaged table, an unreadable manifest, a broken run and
    a damaged ablation table. The copies' manifests name the fixture's run and data, outside this root: the good
    analysis is attributed to the run folder holding it, the sample set is refused."""
    out = tmp_path / "broken"
    good = root / "ctrsink" / "analysis"
    for name in ("future", "damaged"):
        shutil.copytree(good, out / "analysis" / name)
    manifest = json.loads((out / "analysis" / "future" / "manifest.json").read_text())
    (out / "analysis" / "future" / "manifest.json").write_text(json.dumps({**manifest, "schema_version": 99}))
    (out / "analysis" / "damaged" / "role_mass.parquet").write_bytes(b"not parquet at all")
    (out / "analysis" / "garbage").mkdir()
    (out / "analysis" / "garbage" / "manifest.json").write_text("{not json")
    shutil.copytree(root / "ctrsink", out / "ctrsink", ignore=shutil.ignore_patterns("checkpoint"))
    shutil.copytree(root / "baseline", out / "bad_run", ignore=shutil.ignore_patterns("checkpoint"))
    (out / "bad_run" / "metrics.jsonl").write_text("{broken\n")
    shutil.copytree(root / "ablation", out / "ablation", ignore=shutil.ignore_patterns("runs"))
    (out / "ablation" / "ablation.parquet").write_bytes(b"garbage")
    return out


def test_broken_artifacts_show_errors_and_the_rest_works(broken_root: Path) -> None:
    at = open_page(broken_root, "attention")
    errors = "\n".join(e.value for e in at.error)
    assert "analysis/future" in errors and "schema version 99" in errors
    assert "analysis/damaged" in errors and "analysis/garbage" in errors and "not readable JSON" in errors
    assert any("sinkviz capture" in c.value for c in at.code)  # the fix for the unknown schema
    assert traces(figures(at)[0])["ctrsink (CTR-Sink): sink"]["y"]  # the good analysis still draws

    at = open_page(broken_root, "runs")
    assert "bad_run" in "\n".join(e.value for e in at.error)
    assert "ctrsink · valid · all_tokens" in traces(figures(at)[0])

    at = open_page(broken_root, "ablations")
    assert "ablation" in "\n".join(e.value for e in at.error)
    for page in ("inter_sink", "explorer"):
        at = open_page(broken_root, page)
        assert figures(at), page

"""sinkviz for the ID-based comparison rows (DIN, SparseCTR-lite, SRP4CTR-lite) on tiny seeded runs.

Checks: hook names and captured shapes; the reductions on hand-made arrays (distributions sum to one, JS divergence
0 for identical and > 0 for different candidates, mass per time-gap bucket sums to one per row, boundaries are
SparseCTR's chunk edges); `capture_id_run` on a trained DIN run (logits equal `score_rows`, the same candidate twice
gives JS 0), artifacts round-trip and fail clearly; `sinkviz capture` on an ID run; the dashboard page under AppTest.
SparseCTR-lite and SRP4CTR-lite tests skip while their modules are missing.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from app_fixture import decoded

from ctrsink.config import load_config
from ctrsink.data import load_sample_set, prepare
from ctrsink.idview import HORIZON_DAYS, TAU_HOURS, IDBatcher
from ctrsink.run import load_run, score_rows
from ctrsink.sinks.signals import time_gap_bucket
from ctrsink.train import train
from sinkviz import AnalysisError, capture_id_run, capture_points, load_id_analysis
from sinkviz.artifacts import ID_TABLE_COLUMNS, MANIFEST
from sinkviz.idrows import (
    analyse_id_rows,
    boundary_tokens,
    bucket_mass,
    entropy,
    gap_hours,
    gap_profile,
    js_divergence,
    keys_for_mass,
    lambda_table,
    normalise,
    other_items,
    parse_point,
    top_category_overlap,
)

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "app" / "app.py"
SAMPLES = 24
TINY = {"epochs": 1, "train_samples": 200, "eval_samples": 100, "num_threads": 1}
EXTRA = {
    "din": [],
    "sparsectr_lite": ["id_model.dim=16"],
    "srp4ctr_lite": ["id_model.dim=16", "srp4ctr.init=random"],  # no pre-training: seconds, not minutes
}
MODULES = {"sparsectr_lite": "ctrsink.idmodels.sparsectr", "srp4ctr_lite": "ctrsink.idmodels.srp4ctr"}

torch.set_num_threads(1)


def config(model: str):
    return load_config(None, [f"model={model}", *(f"{k}={v}" for k, v in TINY.items()), *EXTRA[model]])


def need(model: str) -> None:
    """Skip while a row's module has not landed yet."""
    if model in MODULES:
        pytest.importorskip(MODULES[model])


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("idrows")
    prepare("csv", REPO / "sample_data" / "synthetic", out / "data")
    return out


@pytest.fixture(scope="module")
def din_run(root: Path) -> Path:
    train(root / "data", config("din"), root / "din")
    return root / "din"


@pytest.fixture(scope="module")
def din_analysis(din_run: Path, root: Path) -> Path:
    return capture_id_run(din_run, root / "analysis" / "din", samples=SAMPLES, seed=3, batch_size=16)


def lite(root: Path, model: str) -> Path:
    """The analysis folder of a tiny trained `model` run (trained and captured on first use); skips while the
    row's module is missing."""
    need(model)
    run, out = root / model, root / "analysis" / model
    if not (run / "final_metrics.json").is_file():
        train(root / "data", config(model), run)
    if not (out / MANIFEST).is_file():
        capture_id_run(run, out, samples=SAMPLES, seed=3, batch_size=10)
    return out


@pytest.fixture(scope="module")
def batch(root: Path):
    """(fields of 6 test rows, IDBatcher) over the prepared sample data."""
    splits, items, manifest = load_sample_set(root / "data")
    rows = splits["test"].slice(0, 6).to_pylist()
    batcher = IDBatcher(items.to_pandas(), config("din"), manifest["history_fields"])
    return batcher(rows)["fields"], batcher


def build(model: str, batcher: IDBatcher) -> torch.nn.Module:
    from ctrsink.idmodels.registry import build_id_model

    need(model)
    torch.manual_seed(0)
    return build_id_model(config(model), batcher.vocab).eval()


# ------------------------------------------------------------------------------------------------ hook points


def test_hook_names_parse_into_modules_and_layers() -> None:
    assert parse_point("din.attn.weights") == ("din", 0)
    assert parse_point("target.attn.probs") == ("target", 0)
    assert parse_point("cross.layer.1.attn.probs") == ("cross", 1)
    assert parse_point("query.layer.0.attn.probs") == ("query", 0)
    assert parse_point("layer.3.branch.transition.probs") == ("transition", 3)
    assert parse_point("layer.0.branch.global.probs") == ("global", 0)
    assert parse_point("layer.1.gates") == ("gates", 1)
    assert parse_point("chunks") == ("chunks", 0)
    assert parse_point("encoder.layer.0.attn.probs") is None  # self-attention: not candidate over history
    assert parse_point("layer.0.attn.pattern") is None


def test_capture_points_din_shapes_and_filters(batch) -> None:
    fields, batcher = batch
    model = build("din", batcher)
    b, length = fields["hist_mask"].shape
    with torch.no_grad(), capture_points(model) as cache:
        model(fields)
        model(fields)
    assert list(cache) == ["din.attn.weights"] and len(cache["din.attn.weights"]) == 2
    weights = cache["din.attn.weights"][0]
    assert weights.shape == (b, length) and not weights.requires_grad
    assert (weights[~fields["hist_mask"]] == 0).all()
    seen = []
    with torch.no_grad(), capture_points(model, "din.attn.weights", lambda n, t: seen.append((n, t.shape))):
        model(fields)
    assert seen == [("din.attn.weights", (b, length))]
    with pytest.raises(ValueError, match="unknown hook name"):
        with capture_points(model, ["din.attn.weight"]):
            pass
    model(fields)  # hooks are gone after the block
    assert len(seen) == 1


def test_capture_points_sparsectr_shapes(batch) -> None:
    fields, batcher = batch
    model = build("sparsectr_lite", batcher)
    model.fold = False
    cfg = model.cfg
    b, length = fields["hist_mask"].shape
    h, p, t = cfg.id_model.heads, cfg.sparsectr.chunks, length + 1
    with torch.no_grad(), capture_points(model) as cache:
        model(fields)
    want = {"chunks": (b, length)}
    for layer in range(cfg.id_model.layers):
        want[f"layer.{layer}.branch.global.probs"] = (b, h, t, p)
        want[f"layer.{layer}.branch.transition.probs"] = (b, h, t, t)
        want[f"layer.{layer}.branch.local.probs"] = (b, h, t, t)
        want[f"layer.{layer}.gates"] = (b, h, t, 3)
    assert {k: tuple(v[0].shape) for k, v in cache.items()} == want
    chunks = cache["chunks"][0]
    assert ((chunks == -1) == ~fields["hist_mask"]).all()
    # boundary tokens = the tokens on either side of SparseCTR's chunk edges (same gap rule)
    mask = fields["hist_mask"].numpy()
    edges = boundary_tokens(fields["hist_ts"].numpy(), mask, p - 1)
    c = chunks.numpy()
    change = np.zeros_like(mask)
    change[:, 1:] = (c[:, 1:] != c[:, :-1]) & mask[:, :-1]
    change[:, :-1] |= change[:, 1:]
    np.testing.assert_array_equal(edges, change)


def test_capture_points_srp4ctr_shapes(batch) -> None:
    fields, batcher = batch
    model = build("srp4ctr_lite", batcher)
    model.fold = False
    cfg = model.cfg
    b, length = fields["hist_mask"].shape
    h, m = cfg.id_model.heads, cfg.srp4ctr.queries
    with torch.no_grad(), capture_points(model, lambda n: parse_point(n) is not None) as cache:
        model(fields)
    want = {"target.attn.probs": (b, length)}
    for layer in range(cfg.id_model.layers):
        want[f"cross.layer.{layer}.attn.probs"] = (b, h, 1, length)
    for layer in range(cfg.srp4ctr.query_layers):
        want[f"query.layer.{layer}.attn.probs"] = (b, h, m, length)
    assert {k: tuple(v[0].shape) for k, v in cache.items()} == want


def test_folded_tensors_and_plain_models_are_refused(batch) -> None:
    from sinkviz import IDRowsAnalysis

    fields, _ = batch
    two = {k: v[:2] for k, v in fields.items()}
    analysis = IDRowsAnalysis(34, 32, 7)
    analysis.set_batch(two, [1, 1], pairs=1)
    with pytest.raises(ValueError, match="model.fold = False"):
        analysis("din.attn.weights", torch.zeros(1, two["hist_mask"].shape[1]))  # one group for two rows
    with pytest.raises(ValueError, match="no hook_points"):
        with capture_points(torch.nn.Linear(2, 2)):
            pass


def test_lambda_table_reads_the_temporal_bias_coefficients(batch) -> None:
    _, batcher = batch
    model = build("sparsectr_lite", batcher)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".lam"):
                param.copy_(torch.arange(param.numel(), dtype=param.dtype).view_as(param))
    table = lambda_table(model)
    cfg = model.cfg
    assert len(table) == cfg.id_model.layers * cfg.id_model.heads * 4
    assert set(table["component"]) == {"log_dt", "rel_pos", "hour_diff", "weekday"}
    one = table[(table["layer"] == 1) & (table["head"] == 2)].set_index("component")["value"]
    assert one.to_dict() == {"log_dt": 8.0, "rel_pos": 9.0, "hour_diff": 10.0, "weekday": 11.0}
    assert lambda_table(build("din", batcher)).empty


# ------------------------------------------------------------------------------------------------ reductions


def test_distributions_sum_to_one_and_concentration() -> None:
    mask = np.array([[False, True, True, True], [True, True, True, True], [False, False, False, False]])
    weights = np.array(
        [[5.0, 1.0, 1.0, 2.0, 4.0], [1, 1, 1, 1, 0], [0, 0, 0, 0, 1]]
    )  # last column: not history
    dist, outside = normalise(weights, mask)
    np.testing.assert_allclose(dist[:2].sum(1), 1.0)
    np.testing.assert_allclose(dist[0], [0, 0.25, 0.25, 0.5])  # padding mass dropped, renormalised
    assert outside[0] == pytest.approx(1 - 4 / 13) and outside[1] == 0
    assert np.isnan(dist[2]).all()  # no history: no distribution
    h = entropy(dist)
    assert h[1] == pytest.approx(math.log(4)) and np.isnan(h[2])
    assert keys_for_mass(dist)[:2].tolist() == [3.0, 4.0]
    assert keys_for_mass(np.array([[0.95, 0.05, 0.0]]))[0] == 1.0


def test_js_divergence_zero_for_identical_positive_otherwise() -> None:
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(6), size=4)
    q = rng.dirichlet(np.ones(6), size=4)
    np.testing.assert_allclose(js_divergence(p, p), 0.0, atol=1e-12)
    js = js_divergence(p, q)
    assert (js > 0).all() and (js <= 1).all()
    np.testing.assert_allclose(js, js_divergence(q, p))  # symmetric
    assert js_divergence(np.array([[1.0, 0]]), np.array([[0, 1.0]]))[0] == pytest.approx(1.0)  # disjoint


def test_bucket_mass_sums_to_one_per_row_and_gap_edges() -> None:
    rng = np.random.default_rng(1)
    mask = np.ones((5, 7), dtype=bool)
    mask[0, :3] = False
    dist, _ = normalise(rng.random((5, 7)), mask)
    ids = np.where(mask, rng.integers(1, 9, size=(5, 7)), 0)
    mass = bucket_mass(dist, ids, 10)
    np.testing.assert_allclose(mass.sum(1), 1.0)
    assert mass[:, 0].sum() == 0  # padding id 0 gets nothing
    n = 32  # the bucket's lower edge falls into the bucket, just below it does not
    for bucket in (2, 5, 17, 31):
        seconds = gap_hours(bucket, n) * 3600
        assert time_gap_bucket(np.array([seconds * 1.0001]), n, TAU_HOURS, HORIZON_DAYS)[0] + 1 == bucket
        assert time_gap_bucket(np.array([seconds * 0.999]), n, TAU_HOURS, HORIZON_DAYS)[0] + 1 == bucket - 1


def test_boundaries_and_category_overlap_on_hand_made_rows() -> None:
    ts = np.array([[0, 0, 100, 101, 500, 501, 502], [0, 10, 20, 30, 40, 50, 60]])
    mask = np.array([[False, False, True, True, True, True, True], [True] * 7])
    b = boundary_tokens(ts, mask, 1)
    assert b[0].tolist() == [False, False, False, True, True, False, False]  # the 399 s gap
    assert b[1].tolist() == [True, True] + [False] * 5  # equal gaps: the earliest
    assert not boundary_tokens(ts, mask, 0).any()
    dist = np.array([[0, 0, 0.1, 0.2, 0.3, 0.4, 0.0], [0.5, 0.5, 0, 0, 0, 0, 0]])
    cats = np.array([[0, 0, 3, 3, 4, 3, 4], [3, 4, 3, 3, 3, 3, 3]])
    overlap = top_category_overlap(dist, cats, np.array([3, 3]))
    assert overlap[0] == pytest.approx(2 / 3)  # top 3: positions 5 (3), 4 (4), 3 (3)
    assert overlap[1] == pytest.approx(1 / 2)  # only two behaviors hold mass


def test_other_items_are_seeded_and_never_the_target() -> None:
    targets = np.arange(50) % 7
    a, b = other_items(targets, 7, seed=4), other_items(targets, 7, seed=4)
    np.testing.assert_array_equal(a, b)
    assert (a != targets).all() and a.min() >= 0 and a.max() < 7
    assert not np.array_equal(a, other_items(targets, 7, seed=5))


# ------------------------------------------------------------------------------------------------ runs


def test_capture_id_run_din_round_trips(din_analysis: Path, din_run: Path) -> None:
    a = load_id_analysis(din_analysis)
    m = a.manifest
    assert (m["kind"], m["model"], m["split"], m["samples"], m["seed"]) == (
        "id_rows",
        "din",
        "test",
        SAMPLES,
        3,
    )
    assert m["hook_names"] == ["din.attn.weights"] and m["modules"] == ["din"]
    for name, columns in ID_TABLE_COLUMNS.items():
        assert list(a[name].columns) == list(columns), name
    # logits of both candidates equal the public scoring API on the same rows
    preds = a.predictions
    assert (preds["candidate"] == "true").sum() == (preds["candidate"] == "other").sum() == SAMPLES
    split = pd.read_parquet(din_run.parent / "data" / "test.parquet").set_index("sample_id", drop=False)
    bundle = load_run(din_run)
    rows = [
        dict(split.loc[int(r.sample_id)].to_dict(), item_idx=int(r.item_idx))
        for r in preds.itertuples(index=False)
    ]
    np.testing.assert_allclose(preds["logit"], score_rows(bundle, rows), atol=1e-5)
    true = preds[preds["candidate"] == "true"]
    assert (true["item_idx"].to_numpy() == split.loc[true["sample_id"], "item_idx"].to_numpy()).all()
    assert (preds.query("candidate == 'other'")["item_idx"].to_numpy() != true["item_idx"].to_numpy()).all()
    # tables
    d = a.distributions
    assert set(d["module"]) == {"din"} and (d["entropy"] <= np.log(d["n_keys"]) + 1e-9).all()
    assert ((d["keys90"] >= 1) & (d["keys90"] <= d["n_keys"])).all()
    assert d["boundary_mass"].between(0, 1).all() and d["cat_status"].isin(["new", "recurring"]).all()
    sums = a.gap_mass.groupby(["module", "layer", "candidate"])[["mass", "uniform"]].sum()
    np.testing.assert_allclose(sums.to_numpy(), 1.0)
    assert (a.conditioning["js"] > 0).all() and (a.conditioning["js"] <= 1).all()
    assert a.gates.empty and a.chunk_mass.empty and a.lambdas.empty
    profile = gap_profile(a)
    assert set(profile["series"]) == {"din"} and profile["mass"].sum() == pytest.approx(1.0)


def test_same_candidate_twice_gives_zero_js(din_run: Path) -> None:
    bundle = load_run(din_run)
    rows = pd.read_parquet(din_run.parent / "data" / "test.parquet").head(10).to_dict("records")
    same = [int(r["item_idx"]) for r in rows]
    analysis, preds = analyse_id_rows(bundle, rows, same, batch_size=8, boundary_gaps=7)
    js = analysis.tables()["conditioning"]["js"]
    assert len(js) > 0 and np.allclose(js, 0.0, atol=1e-9)
    np.testing.assert_allclose(
        preds.query("candidate == 'true'")["logit"], preds.query("candidate == 'other'")["logit"]
    )


def test_loader_names_the_missing_or_broken_file(din_analysis: Path, tmp_path: Path) -> None:
    copy = tmp_path / "a"
    shutil.copytree(din_analysis, copy)
    (copy / "gap_mass.parquet").unlink()
    with pytest.raises(AnalysisError, match=r"gap_mass\.parquet: missing table"):
        load_id_analysis(copy)
    pd.DataFrame({"x": [1]}).to_parquet(copy / "gap_mass.parquet")
    with pytest.raises(AnalysisError, match=r"gap_mass\.parquet: table 'gap_mass' lacks column"):
        load_id_analysis(copy)
    (copy / "gap_mass.parquet").write_bytes(b"garbage")
    with pytest.raises(AnalysisError, match=r"gap_mass\.parquet: unreadable Parquet"):
        load_id_analysis(copy)
    record = json.loads((copy / MANIFEST).read_text())
    (copy / MANIFEST).write_text(json.dumps({**record, "schema_version": 99}))
    with pytest.raises(AnalysisError, match="schema version 99"):
        load_id_analysis(copy)
    (copy / MANIFEST).write_text(json.dumps({**record, "kind": "sinkviz.analysis"}))
    with pytest.raises(AnalysisError, match="not an ID-row analysis manifest"):
        load_id_analysis(copy)
    with pytest.raises(AnalysisError, match="no manifest.json"):
        load_id_analysis(tmp_path / "nothing")


def test_sparsectr_run_branch_shares_chunks_and_lambda(root: Path) -> None:
    from sinkviz.idrows import branch_shares

    a = load_id_analysis(lite(root, "sparsectr_lite"))
    layers = a.manifest["id_model"]["layers"]
    assert set(a.distributions["module"]) == {"global", "transition", "local"}
    assert len(a.manifest["modules"]) == 3 * layers
    g = a.gates.groupby(["sample_id", "candidate", "layer"])["share"].sum()
    np.testing.assert_allclose(g, 1.0)
    assert set(a.gates["branch"]) == {"global", "transition", "local"}
    shares = branch_shares(a.gates)
    assert set(shares["cat_status"]) >= {"all"} and set(shares["cat_status"]) <= {"all", "new", "recurring"}
    assert shares.query("cat_status == 'all'")["rows"].eq(SAMPLES).all()
    assert (a.chunk_mass["chunk_distance"] >= 0).all() and a.chunk_mass["mass"].between(0, 1).all()
    assert len(a.lambdas) == layers * a.manifest["id_model"]["heads"] * 4
    local = a.distributions.query("module == 'local'")
    assert (local["outside_mass"] > 0).all()  # the candidate also attends to itself in the local branch
    sums = a.gap_mass.groupby(["module", "layer", "candidate"])["mass"].sum()
    np.testing.assert_allclose(sums, 1.0)


def test_srp4ctr_run_queries_do_not_see_the_candidate(root: Path) -> None:
    a = load_id_analysis(lite(root, "srp4ctr_lite"))
    assert {"target", "cross", "query"} <= set(a.distributions["module"])
    cond = a.conditioning
    assert np.allclose(cond.query("module == 'query'")["js"], 0.0, atol=1e-9)
    assert (cond.query("module == 'cross'")["js"] > 0).any()
    cross = a.distributions.query("module == 'cross'")
    assert np.allclose(cross["outside_mass"], 0.0, atol=1e-6)  # probabilities over the real history only
    assert (a.distributions.groupby(["module", "layer"]).size() <= 2 * SAMPLES).all()


def test_sinkviz_capture_cli_dispatches_id_runs(din_run: Path, tmp_path: Path, capsys) -> None:
    from sinkviz.cli import main

    out = tmp_path / "cli"
    code = main(["capture", "--run", str(din_run), "--out", str(out), "--samples", "6", "--seed", "1"])
    assert code == 0 and "ID-row analysis" in capsys.readouterr().out
    a = load_id_analysis(out)
    assert (a.manifest["samples"], a.manifest["seed"], a.manifest["model"]) == (6, 1, "din")
    assert main(["capture", "--run", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2


# ------------------------------------------------------------------------------------------------ dashboard


def open_page(root: Path):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(APP), default_timeout=120)
    at.session_state["root"] = str(root)
    at.switch_page("views/id_rows.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def figures(at) -> dict[str, dict]:
    """Each plotly chart's figure JSON by title, arrays decoded."""
    out = {}
    for el in at.get("plotly_chart"):
        fig = decoded(json.loads(el.proto.spec))
        out[fig["layout"]["title"]["text"]] = fig
    return out


def test_id_rows_page_renders_the_analyses(din_analysis: Path, root: Path, tmp_path: Path) -> None:
    from sinkviz.artifacts import make_manifest, write_analysis

    sys.path.insert(0, str(APP.parent))
    import discover

    page_root = tmp_path / "root"
    shutil.copytree(din_analysis, page_root / "analysis" / "din")
    for model in MODULES:  # the -lite rows too, once their modules exist
        try:
            shutil.copytree(lite(root, model), page_root / "analysis" / model)
        except pytest.skip.Exception:
            pass
    a = load_id_analysis(page_root / "analysis" / "din")
    # a CTR-Sink analysis of the same data, split and samples: the page points at it
    sink = make_manifest(
        run_dir=str(root / "ctrsink"),
        data_dir=a.manifest["data_dir"],
        split="test",
        samples=SAMPLES,
        sample_seed=3,
        model_family="bert",
        model_type="bert",
        layers=2,
        heads=2,
        roles=[],
        fields=[],
        history_fields=[],
        anchor="sink",
        use_sink=True,
    )
    write_analysis(page_root / "analysis" / "ctrsink", sink, {}, {})
    found = discover.find_artifacts(page_root)
    assert [x.name for x in found.id_rows] == sorted(
        p.relative_to(page_root).as_posix() for p in (page_root / "analysis").iterdir() if p.name != "ctrsink"
    )
    assert [x.name for x in found.analyses] == ["analysis/ctrsink"]  # the CTR-Sink pages never see ID folders

    at = open_page(page_root)
    figs = figures(at)
    gap = {t["name"]: t for t in figs["Mass per time-gap bucket"]["data"]}
    din = gap_profile(a)
    label = next(n for n in gap if n.endswith(": din"))
    assert gap[label]["y"] == pytest.approx(din["mass"].tolist())
    assert gap[label]["x"] == din["bucket"].tolist()
    assert any(n.endswith(": uniform") for n in gap)
    js = figs["JS divergence per module"]["data"]
    din_js = next(t for t in js if "(DIN)" in t["name"])
    assert din_js["y"][0] == pytest.approx(a.conditioning["js"].mean())
    assert "Concentration per module" in figs and "Boundary alignment" in figs
    text = "\n".join(str(x.value) for x in list(at.caption) + list(at.markdown))
    assert "re-implementations" in text and "not the papers' code".lower() in text.lower()
    assert "the same samples" in text  # the CTR-Sink analysis beside
    if (page_root / "analysis" / "sparsectr_lite").is_dir():
        assert any(t.endswith("branch share") for t in figs) and any(t.endswith(": λ") for t in figs)
    at.radio(key="idr_candidate").set_value("other").run()
    assert not at.exception
    other = gap_profile(a, "other")
    gap = {t["name"]: t for t in figures(at)["Mass per time-gap bucket"]["data"]}
    assert gap[label]["y"] == pytest.approx(other["mass"].tolist())


def test_id_rows_page_empty_root_says_what_to_run(tmp_path: Path) -> None:
    at = open_page(tmp_path)
    assert any("sinkviz capture --run" in c.value for c in at.code)
    assert not at.get("plotly_chart")

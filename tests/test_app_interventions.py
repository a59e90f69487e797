"""The "Interventions and faithfulness" page under AppTest, on copies of the fixture's two tiny runs (baseline
and CTR-Sink) with real `sinkviz intervene / faithfulness / heads` results: every chart's data is checked
against the tables the loaders return (and head roles against `sinkviz.heads.classify`); the empty state names
the commands.

The page is opened directly (app/views/interventions.py), so the test does not depend on its registration in
app/app.py's PAGES.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from app_fixture import decoded, relocate, session_root
from streamlit.testing.v1 import AppTest

from sinkviz import faithfulness_curves, head_roles, intervene, load_interventions
from sinkviz.heads import classify

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "app" / "views" / "interventions.py"
sys.path.insert(0, str(PAGE.parents[1]))  # the app's own modules (ui, discover, charts)
RUNS = ("baseline", "ctrsink")
SAMPLES = 8
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Copies of the fixture's data and runs (its own root stays as other tests expect it), with results."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    shared = session_root(tmp_path_factory.getbasetemp(), with_ablation=False)
    base = tmp_path_factory.mktemp("iv_root")
    shutil.copytree(shared / "data", base / "data")
    for name in RUNS:
        shutil.copytree(shared / name, base / name)
        relocate(base / name, base / "data")
        out = base / name / "interventions"
        intervene(base / name, "test", SAMPLES, out, batch_size=SAMPLES, n_boot=100)
        head_roles(base / name, "test", SAMPLES, out, batch_size=SAMPLES)
    faithfulness_curves(
        base / "ctrsink", "test", SAMPLES, base / "ctrsink" / "interventions", n_steps=4, n_boot=100
    )
    torch.set_num_threads(before)
    return base


def open_page(root: Path) -> AppTest:
    at = AppTest.from_file(str(PAGE), default_timeout=120)
    at.session_state["root"] = str(root)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def figures(at: AppTest) -> dict[str, dict]:
    """Each plotly chart's figure JSON by its title, arrays decoded."""
    out = {}
    for el in at.get("plotly_chart"):
        fig = decoded(json.loads(el.proto.spec))
        out[fig["layout"]["title"]["text"]] = fig
    return out


def test_page_charts_equal_the_results(root: Path) -> None:
    at = open_page(root)
    at.selectbox(key="iv_result").set_value("ctrsink/interventions").run()
    sink = load_interventions(root / "ctrsink" / "interventions")
    figs = figures(at)
    # interventions: one bar per non-head intervention, error bars to the interval's ends
    table = sink["interventions"]
    rows = table[table["kind"] != "head_mean"]
    bar = figs["Δ AUC per intervention"]["data"][0]
    assert bar["x"] == rows["intervention"].tolist()
    np.testing.assert_allclose(bar["y"], rows["delta_auc"], equal_nan=True)
    np.testing.assert_allclose(np.add(bar["y"], bar["error_y"]["array"]), rows["hi_auc"], equal_nan=True)
    # head grid: layer x head of Δ AUC, all four layers (the upper ones too)
    heads = table[table["kind"] == "head_mean"]
    grid = figs["Δ AUC when one head is mean-ablated"]["data"][0]
    want = heads.pivot(index="layer", columns="head", values="delta_auc").sort_index().to_numpy()
    np.testing.assert_allclose(np.array(grid["z"], dtype=float), want, equal_nan=True)
    assert len(grid["y"]) == 4 and len(grid["x"]) == 4
    # deletion curves: one line per explanation and the random baseline
    curves = sink["deletion_curves"]
    lines = {t["name"]: t for t in figs[next(k for k in figs if k.startswith("comprehensiveness"))]["data"]}
    assert set(lines) == {"attention", "rollout", "integrated_gradients", "occlusion", "random"}
    for method, trace in lines.items():
        part = curves[(curves["method"] == method) & (curves["measure"] == "comprehensiveness")].sort_values(
            "k"
        )
        assert trace["x"] == part["k"].tolist()
        np.testing.assert_allclose(trace["y"], part["mean"])
    # rollout next to raw attention, per behavior
    roll = figs[next(k for k in figs if k.startswith("Attention to each behavior"))]["data"]
    field = sorted(sink["rollout"]["field"].unique())[0]
    mean = sink["rollout"][sink["rollout"]["field"] == field].groupby(["layer", "behavior"])["rollout"].mean()
    last = mean.loc[mean.index.get_level_values(0).max()]
    np.testing.assert_allclose(roll[-1]["y"], last.to_numpy())
    # head roles of both runs, as classify gives them at the default threshold
    for name in ("baseline", "ctrsink"):
        result = load_interventions(root / name / "interventions")
        roles = classify(result["head_mass"], 0.5, result.manifest["history_fields"])
        fig = figs[next(k for k in figs if k.startswith(name) and "interventions" in k)]
        cells = np.array(fig["data"][0]["customdata"])
        assert (
            cells.tolist()
            == roles.pivot(index="layer", columns="head", values="role").sort_index().values.tolist()
        )
    assert "heads change role between the two runs" in "\n".join(c.value for c in at.caption)


def test_threshold_and_measure_change_the_charts(root: Path) -> None:
    at = open_page(root)
    at.slider(key="hr_threshold").set_value(0.2).run()
    at.radio(key="fa_measure").set_value("sufficiency").run()
    assert not at.exception
    figs = figures(at)
    sink = load_interventions(root / "ctrsink" / "interventions")
    roles = classify(sink["head_mass"], 0.2, sink.manifest["history_fields"])
    fig = figs[next(k for k in figs if k.startswith("ctrsink") and "interventions" in k)]
    assert (
        np.array(fig["data"][0]["customdata"]).ravel().tolist()
        == roles.sort_values(["layer", "head"])["role"].tolist()
    )
    assert any(k.startswith("sufficiency") for k in figs)


def test_empty_state_names_the_commands(tmp_path: Path) -> None:
    at = open_page(tmp_path)
    code = "\n".join(c.value for c in at.code)
    assert "sinkviz intervene --run" in code and "sinkviz heads --run" in code

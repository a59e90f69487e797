"""The dashboard on per-epoch analyses (`sinkviz capture --every-epoch`): the Attention mass and Inter-sink pages
offer such a series once, with an epoch slider that switches the analysis shown, and the attention page draws sink
mass and Sink_ε over epochs. The root (tests/app_fixture.py `build_epochs`) holds one tiny CTR-Sink run with an
analysis per epoch checkpoint (epoch0 = before training) and one of its best checkpoint."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from app_fixture import ANALYSIS, EPOCHS_ANALYSES, EPOCHS_RUN, build_epochs
from test_app import figures, open_page, text_of, traces

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "app"))

import discover  # noqa: E402

FIELDS = ["pos", "neg"]
SERIES = f"{EPOCHS_RUN}/{EPOCHS_ANALYSES}"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_epochs(tmp_path_factory.mktemp("epochs_root"))


def analysis_at(root: Path, k: int):
    from sinkviz import load_analysis

    return load_analysis(root / EPOCHS_RUN / EPOCHS_ANALYSES / f"epoch{k}")


def test_discovery_groups_the_epoch_folders_of_one_run(root: Path) -> None:
    found = discover.find_artifacts(root)
    (series,) = discover.epoch_series(found.analyses)
    assert sorted(series) == [0, 1, 2]
    assert [a.name for a in series.values()] == [f"{SERIES}/epoch{k}" for k in range(3)]
    assert {a.run for a in series.values()} == {(root / EPOCHS_RUN).resolve()}
    # the best checkpoint's analysis stays a plain analysis
    assert f"{EPOCHS_RUN}/{ANALYSIS}" in {a.name for a in found.analyses}


def test_attention_page_switches_epochs_and_draws_the_trend(root: Path) -> None:
    from sinkviz.views import mass_by_layer

    at = open_page(root, "attention")
    picker = at.multiselect(key="mass_analyses")
    # the series is one entry (its last epoch), next to the best checkpoint's analysis
    assert set(picker.options) == {
        "formation (CTR-Sink) · formation/analysis",
        f"formation (CTR-Sink) · {SERIES} · epochs 0–2",
    }
    at.multiselect(key="mass_analyses").set_value([f"{SERIES}/epoch2"]).run()
    slider = at.select_slider(key="mass_epoch")
    assert slider.value == 2 and [int(o.split()[1]) for o in slider.options] == [0, 1, 2]

    def sink_mass(at) -> tuple[list[float], dict]:
        mass = figures(at)[0]
        (label,) = {name.rsplit(":", 1)[0] for name in traces(mass)}
        return traces(mass)[f"{label}: sink"]["y"], label

    shown = {}
    for k in (2, 0):
        at.select_slider(key="mass_epoch").set_value(k).run()
        assert not at.exception, [e.value for e in at.exception]
        y, label = sink_mass(at)
        assert label.endswith(f"· epoch {k}")
        want = mass_by_layer(analysis_at(root, k)["role_mass"], FIELDS).query("key_role == 'sink'")
        assert y == pytest.approx(want.sort_values("layer")["mass"].tolist())
        shown[k] = y
    assert shown[0] != pytest.approx(shown[2])  # training moved the attention

    # over training: mass on sinks and Sink_eps per epoch (means over layers), the shown epoch marked
    trend = next(f for f in figures(at) if f["layout"]["title"]["text"].startswith("Over training"))
    t = traces(trend)
    mass = t[f"formation (CTR-Sink) · {SERIES}: mass on sinks"]
    share = t[f"formation (CTR-Sink) · {SERIES}: Sink_ε share"]
    assert mass["x"] == [0, 1, 2] and share["x"] == [0, 1, 2]
    for k in range(3):
        a = analysis_at(root, k)
        want = mass_by_layer(a["role_mass"], FIELDS).query("key_role == 'sink'")["mass"].mean()
        assert mass["y"][k] == pytest.approx(want)
        rows = a["sink_metric"].query("key == 'any_anchor' and field in @FIELDS")
        per_layer = rows.assign(w=rows["share"] * rows["n"]).groupby("layer")[["w", "n"]].sum()
        assert share["y"][k] == pytest.approx((per_layer["w"] / per_layer["n"]).mean())
    assert len(set(mass["y"])) > 1
    assert [s["x0"] for s in trend["layout"]["shapes"]] == [0]  # the vertical line at the shown epoch


def test_attention_page_without_a_series_shows_no_slider(root: Path) -> None:
    at = open_page(
        root,
        "attention",
        lambda at: at.session_state.__setitem__("mass_analyses", [f"{EPOCHS_RUN}/{ANALYSIS}"]),
    )
    assert not at.get("select_slider")
    assert "Over training" not in [s.value for s in at.subheader]


def test_inter_sink_page_switches_epochs(root: Path) -> None:
    from sinkviz.views import inter_sink_frame

    at = open_page(
        root, "inter_sink", lambda at: at.session_state.__setitem__("is_analysis", f"{SERIES}/epoch2")
    )
    assert at.select_slider(key="is_epoch").value == 2
    grids = {}
    for k in (2, 0):
        at.select_slider(key="is_epoch").set_value(k).run()
        assert not at.exception, [e.value for e in at.exception]
        assert f"{SERIES}/epoch{k}" in text_of(at)  # the caption names the folder shown
        agg = next(
            f for f in figures(at) if f["layout"]["title"]["text"].startswith("Inter-sink attention, layer 0")
        )
        z = np.array(agg["data"][0]["z"], dtype=float)
        want = inter_sink_frame(analysis_at(root, k)["inter_sink"], 0, "pos")
        np.testing.assert_allclose(z, want.to_numpy(), rtol=1e-6)
        grids[k] = z
    assert not np.allclose(grids[0], grids[2], equal_nan=True)

"""Interventions and faithfulness: what the score loses when a component is taken away, which explanation of a
score to trust, and which heads do what. Reads the folders `sinkviz intervene / faithfulness / heads /
rollout` write (interventions.json) through `sinkviz.load_interventions`; every path is confined to the
root."""

from __future__ import annotations

from pathlib import Path

import charts
import discover
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
import ui

from sinkviz.heads import CATEGORIES, MIXED, classify
from sinkviz.studies import MANIFEST_FILE, TABLE_COLUMNS, find_interventions, load_interventions

METRICS = {"auc": "Δ AUC", "gauc": "Δ gAUC", "logloss": "Δ LogLoss", "abs_score": "mean |Δ score|"}
MEASURES = {
    "comprehensiveness": "comprehensiveness |f(x) − f(x without top k)| (higher = more faithful)",
    "sufficiency": "sufficiency |f(x) − f(only top k)| (lower = more faithful)",
}
ROLE_ORDER = [*CATEGORIES, MIXED]
FILES = (MANIFEST_FILE, *(f"{t}.parquet" for t in TABLE_COLUMNS))


@st.cache_data(ttl=3, show_spinner=False, max_entries=16)
def _find(folder: str) -> list[str]:
    return [str(p) for p in find_interventions(folder)]


@st.cache_resource(show_spinner=False, max_entries=16)
def _load(path: str, key: tuple) -> object:
    return load_interventions(path)


def load_all() -> dict[str, object]:
    """{folder relative to the root: Interventions}; unreadable or refused folders are reported, not fatal."""
    out = {}
    for path in _find(str(ui.folder())):
        name = Path(path).relative_to(ui.root()).as_posix() if Path(path).is_relative_to(ui.root()) else path
        try:
            folder = discover.confine_entries(ui.root(), path)
            out[name] = _load(str(folder), discover.stamps(folder, FILES))
        except Exception as exc:  # a damaged table, a refused path: report it, keep the page
            ui.artifact_error(name, exc)
    return out


def label_of(name: str, result: object) -> str:
    m = result.manifest
    run = Path(m["run_dir"]) if m.get("run_dir") else None
    kind = "CTR-Sink" if m.get("use_sink") else "baseline"
    return f"{ui.run_label(run, name)} ({kind}) · {name}"


def intervention_figure(table: pd.DataFrame, metric: str) -> go.Figure:
    """One bar per intervention (heads excluded): Δ with its 95% user-bootstrap interval."""
    t = table[table["kind"] != "head_mean"]
    delta = t[f"delta_{metric}"].to_numpy(dtype=float)
    fig = go.Figure(
        go.Bar(
            x=t["intervention"].tolist(),
            y=delta.tolist(),
            name=METRICS[metric],
            error_y={
                "type": "data",
                "symmetric": False,
                "array": (t[f"hi_{metric}"].to_numpy(dtype=float) - delta).tolist(),
                "arrayminus": (delta - t[f"lo_{metric}"].to_numpy(dtype=float)).tolist(),
            },
        )
    )
    fig.update_layout(
        title=f"{METRICS[metric]} per intervention", yaxis_title=METRICS[metric], template="plotly_white"
    )
    return fig


def head_grid(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    heads = table[table["kind"] == "head_mean"]
    return heads.pivot(index="layer", columns="head", values=f"delta_{metric}").sort_index()


def curve_figure(curves: pd.DataFrame, measure: str) -> go.Figure:
    """Mean over (sample, field) per k, one line per explanation, 95% intervals over users as error bars."""
    fig = go.Figure()
    part = curves[curves["measure"] == measure]
    for i, (method, p) in enumerate(part.groupby("method", sort=True)):
        p = p.sort_values("k")
        fig.add_trace(
            go.Scatter(
                x=p["k"].tolist(),
                y=p["mean"].tolist(),
                name=str(method),
                mode="lines+markers",
                line={
                    "color": charts.PALETTE[i % len(charts.PALETTE)],
                    "dash": "dot" if method == "random" else "solid",
                },
                error_y={
                    "type": "data",
                    "symmetric": False,
                    "array": (p["hi"] - p["mean"]).tolist(),
                    "arrayminus": (p["mean"] - p["lo"]).tolist(),
                },
            )
        )
    fig.update_layout(
        title=MEASURES[measure], xaxis_title="k behaviors", yaxis_title="|Δ logit|", template="plotly_white"
    )
    return fig


def rollout_figure(rollout: pd.DataFrame, field: str) -> go.Figure:
    """Mean over samples per behavior: raw attention of each layer and the rollout through the last one."""
    part = rollout[rollout["field"] == field]
    mean = part.groupby(["layer", "behavior"], as_index=False)[["raw", "rollout"]].mean()
    fig = go.Figure()
    for layer, p in mean.groupby("layer"):
        fig.add_trace(go.Bar(x=p["behavior"].tolist(), y=p["raw"].tolist(), name=f"raw, layer {layer}"))
    last = mean[mean["layer"] == mean["layer"].max()]
    fig.add_trace(
        go.Scatter(
            x=last["behavior"].tolist(), y=last["rollout"].tolist(), name="rollout", mode="lines+markers"
        )
    )
    fig.update_layout(
        title=f"Attention to each behavior of {field} (mean over samples, from the pooled tokens)",
        xaxis_title="behavior (oldest first)",
        yaxis_title="mass",
        barmode="group",
        template="plotly_white",
    )
    return fig


def roles_figure(roles: pd.DataFrame, title: str) -> go.Figure:
    """Layer x head grid colored by role, the role name and its mass share written in each cell."""
    grid = roles.pivot(index="layer", columns="head", values="role").sort_index()
    share = roles.pivot(index="layer", columns="head", values="top_mass").reindex_like(grid)
    codes = grid.apply(lambda col: col.map(ROLE_ORDER.index)).to_numpy(dtype=float)
    text = [[f"{r}<br>{s:.2f}" for r, s in zip(rr, ss)] for rr, ss in zip(grid.to_numpy(), share.to_numpy())]
    fig = go.Figure(
        go.Heatmap(
            z=codes.tolist(),
            x=[f"head {h}" for h in grid.columns],
            y=[f"layer {i}" for i in grid.index],
            text=text,
            texttemplate="%{text}",
            customdata=grid.to_numpy().tolist(),
            colorscale="Turbo",
            zmin=0,
            zmax=len(ROLE_ORDER) - 1,
            showscale=False,
        )
    )
    fig.update_layout(title=title, yaxis={"autorange": "reversed"}, template="plotly_white")
    return fig


# ------------------------------------------------------------------------------------------------ page

st.title("Interventions and faithfulness")
results = load_all()
if not results:
    run = next(iter(ui.found().standalone_runs()), None)
    r = ui.q(run.path if run else ui.folder() / "RUN_DIR")
    out = ui.q((run.path if run else ui.folder() / "RUN_DIR") / "interventions")
    ui.empty(
        f"No intervention results found under {ui.folder()}. Compute them from a trained run:",
        f"sinkviz intervene --run {r} --out {out} --samples 256\n"
        f"sinkviz faithfulness --run {r} --out {out} --samples 64\n"
        f"sinkviz heads --run {r} --out {out} --samples 256",
    )
    st.stop()
labels = {n: label_of(n, r) for n, r in results.items()}

# ---- interventions -----------------------------------------------------------------------------------------
st.subheader("What the score loses without each component")
st.caption(
    "Δ = metric with the component taken away at inference − metric of the unchanged model on the same "
    "samples, "
    "with 95% paired bootstrap intervals over users. Negative Δ AUC: the model relies on it."
)
with_iv = [n for n, r in results.items() if r.get("interventions") is not None]
if with_iv:
    c1, c2 = st.columns(2)
    name = c1.selectbox("Results", with_iv, format_func=lambda n: labels[n], key="iv_result")
    metric = c2.selectbox("Metric", list(METRICS), format_func=METRICS.get, key="iv_metric")
    table = results[name]["interventions"]
    ui.plot(intervention_figure(table, metric), key="iv_figure")
    shown = table[table["kind"] != "head_mean"]
    cols = ["intervention", "note"] + [f"{p}_{m}" for m in METRICS for p in ("delta", "lo", "hi")]
    st.dataframe(shown[cols], hide_index=True, width="stretch")
    grid = head_grid(table, metric)
    if grid.empty:
        st.caption("No head grid in these results (run `sinkviz intervene` without --no-heads).")
    else:
        title = f"{METRICS[metric]} when one head is mean-ablated"
        x, y = [f"head {h}" for h in grid.columns], [f"layer {i}" for i in grid.index]
        ui.plot(charts.heatmap(grid, x, y, title, "head", "layer", METRICS[metric]), key="iv_heads")
else:
    st.info("No intervention table yet: `sinkviz intervene --run RUN --out DIR`.")

# ---- faithfulness ------------------------------------------------------------------------------------------
st.subheader("Which explanation to trust: deletion curves")
st.caption(
    "Delete the k behaviors an explanation ranks highest (by |score|), measure |Δ logit|; `random` deletes "
    "k random behaviors. A faithful explanation lies above random in comprehensiveness and below it in "
    "sufficiency."
)
with_curves = [n for n, r in results.items() if r.get("deletion_curves") is not None]
if with_curves:
    c1, c2 = st.columns(2)
    name = c1.selectbox("Results", with_curves, format_func=lambda n: labels[n], key="fa_result")
    measure = c2.radio("Measure", list(MEASURES), horizontal=True, key="fa_measure")
    ui.plot(curve_figure(results[name]["deletion_curves"], measure), key="fa_figure")
    roll = results[name].get("rollout")
    if roll is not None and not roll.empty:
        field = st.selectbox("History field", sorted(roll["field"].unique()), key="fa_field")
        ui.plot(rollout_figure(roll, field), key="fa_rollout")
else:
    st.info("No deletion curves yet: `sinkviz faithfulness --run RUN --out DIR`.")

# ---- head roles --------------------------------------------------------------------------------------------
st.subheader("Head roles")
with_heads = [n for n, r in results.items() if r.get("head_mass") is not None]
if with_heads:
    default = [n for n in with_heads if not results[n].manifest.get("use_sink")][:1]
    default += [n for n in with_heads if results[n].manifest.get("use_sink")][:1]
    chosen = st.multiselect(
        "Results to compare",
        with_heads,
        default=default or with_heads[:2],
        format_func=labels.get,
        key="hr_results",
    )
    threshold = st.slider(
        "Role threshold (share of the head's mass)", 0.2, 1.0, 0.5, 0.05, key="hr_threshold"
    )
    st.caption(
        f"A head's role is the place receiving at least {threshold:.2f} of its attention (mean over the "
        "history fields' tokens), else mixed. first = [CLS]/[SEP] or the first token; own/previous "
        "behavior = content of the query's behavior / the one before it; content = other behaviors and the "
        "target."
    )
    grids = {}
    for col, n in zip(st.columns(max(len(chosen), 1)), chosen):
        mass = results[n]["head_mass"]
        history = results[n].manifest.get("history_fields") or sorted(mass["field"].unique())
        grids[n] = classify(mass, threshold, history)
        with col:
            ui.plot(roles_figure(grids[n], labels[n]), key=f"hr_{n}")
    if len(chosen) == 2:
        a, b = (grids[n][["layer", "head", "role"]] for n in chosen)
        both = a.merge(
            b, on=["layer", "head"], suffixes=(f" · {labels[chosen[0]]}", f" · {labels[chosen[1]]}")
        )
        changed = both[both.iloc[:, 2] != both.iloc[:, 3]]
        st.caption(f"{len(changed)} of {len(both)} heads change role between the two runs.")
        st.dataframe(changed, hide_index=True, width="stretch")
else:
    st.info("No head roles yet: `sinkviz heads --run RUN --out DIR`.")
